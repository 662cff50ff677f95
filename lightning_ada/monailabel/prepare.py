"""Make a MONAI Label datastore from cases in any layout the library reads: one 4-D NIfTI per
case (modalities on the last axis, in the given order), optionally with its reference labels as
MONAI Label ``final`` labels.

    python -m lightning_ada.monailabel.prepare --root BRATS_FOLDER --layout brats --out studies \\
        --modalities flair t1 t1ce t2

Each case is checked first as the library checks it (every modality on one grid and affine,
finite values, label values); a case that fails stops the run with the library's one-line error
naming the file. Cases already written are skipped, so an interrupted call resumes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from lightning_ada.cases import Case
from lightning_ada.data.readers import read_cases
from lightning_ada.data.validation import validate_case
from lightning_ada.errors import DataError
from lightning_ada.io import atomic_path, write_nifti_atomic


def four_d(case: Case) -> nib.Nifti1Image:
    """The case's modalities stacked on a 4th axis, with the first modality's affine and header."""
    first = nib.load(case.images[0])
    volumes = [np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in case.images]
    header = first.header.copy()
    header.set_data_dtype(np.float32)
    image = nib.Nifti1Image(np.stack(volumes, axis=-1), first.affine, header)
    image.header.set_xyzt_units(*first.header.get_xyzt_units())
    return image


def prepare(root: str, layout: str, out: Path, modalities: list[str] | None,
            label_values: list[int] | None, split: str | None, with_labels: bool) -> list[str]:
    """Write the datastore; returns the case ids written (or already there)."""
    kwargs = {"modalities": modalities} if modalities and layout in ("brats", "brats2023") else {}
    cases = [c for c in read_cases(root, layout, **kwargs) if split is None or c.split == split]
    if not cases:
        raise DataError(f"{root}: no case{f' in split {split!r}' if split else ''}")
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for case in tqdm(cases, desc="4-D images", unit="case"):
        target = out / f"{case.case_id}.nii.gz"
        if len(case.images) == 1:  # already 4-D (MSD)
            if not target.is_file():
                with atomic_path(target) as tmp:
                    shutil.copyfile(case.images[0], tmp)
        elif not target.is_file():
            validate_case(case, label_values=label_values)
            write_nifti_atomic(four_d(case), target)
        if with_labels and case.label:
            final = out / "labels" / "final" / f"{case.case_id}.nii.gz"
            final.parent.mkdir(parents=True, exist_ok=True)
            if not final.is_file():
                with atomic_path(final) as tmp:
                    shutil.copyfile(case.label, tmp)
        done.append(case.case_id)
    return done


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lightning_ada.monailabel.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="dataset folder or datalist")
    p.add_argument("--layout", required=True, choices=["brats", "brats2023", "msd", "nnunet", "datalist"])
    p.add_argument("--out", required=True, help="the studies folder to write")
    p.add_argument("--modalities", nargs="+", default=None, help="channel order (BraTS layouts)")
    p.add_argument("--label-values", nargs="+", type=int, default=None,
                   help="allowed foreground label values (checked)")
    p.add_argument("--split", default=None, help="only the cases of this split (e.g. pool)")
    p.add_argument("--with-labels", action="store_true",
                   help="copy reference labels as final labels (a simulation, or labels kept)")
    args = p.parse_args(argv)
    try:
        done = prepare(args.root, args.layout, Path(args.out), args.modalities, args.label_values,
                       args.split, args.with_labels)
    except DataError as bad:
        sys.exit(f"error: {bad}")
    print(f"{len(done)} case(s) in {args.out}")


if __name__ == "__main__":
    main()
