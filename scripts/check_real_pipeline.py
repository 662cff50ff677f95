"""Measure the real-data pipeline: preprocessing cache (first vs second run) and predictions
written back in the original geometry.

    python scripts/check_real_pipeline.py --ckpt runs/bench_brats18/brats18/seed0/fold0/mmacts_b3/checkpoints/last.ckpt

1. Preprocesses every case of ``--root`` with the settings of ``configs/brats18/mmacts.yaml``
   into a fresh cache folder and times it, then sets up again from the cache and times that.
2. With ``--ckpt``: ``lightning-ada predict`` on the test cases of fold ``--fold``, then reloads
   each predicted mask with nibabel and compares its shape and affine with the case's FLAIR.
Prints one line per measurement; ``--out`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def data_args(config: Path, root: str, cache: Path) -> dict:
    """The datamodule arguments of ``config`` over every case of ``root`` (as one pool)."""
    from ada_bench.runner import compose
    from ada_bench.tasks import base_files

    from lightning_ada.data.readers import read_cases

    data = dict(compose([*base_files(config.parent), config])["data"])
    ids = [c.case_id for c in read_cases(root, data["layout"], modalities=data["modalities"])]
    data.update(root=root, cache_dir=str(cache), splits={"pool": ids, "test": ids[:1]})
    return data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "brats18"))
    p.add_argument("--config", default=str(REPO / "configs" / "brats18" / "mmacts.yaml"))
    p.add_argument("--ckpt", help="a brats18 checkpoint to predict with")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--out", help="JSON file of the measurements")
    args = p.parse_args()
    if not Path(args.root).is_dir():
        print(f"{args.root}: no such folder (the real BraTS 2018 cases)", file=sys.stderr)
        return 2

    from lightning_ada.data.datamodule import ActiveDataModule

    found: dict = {}
    work = Path(tempfile.mkdtemp(prefix="real_pipeline_"))
    try:
        data = data_args(Path(args.config), args.root, work / "cache")
        for run in ("first", "second"):
            t0 = time.perf_counter()
            ActiveDataModule(**data).setup("fit")
            found[f"cache_{run}_s"] = round(time.perf_counter() - t0, 2)
            print(f"setup of {len(data['splits']['pool'])} cases, {run} run: "
                  f"{found[f'cache_{run}_s']} s", flush=True)
        if args.ckpt:
            from lightning_ada.main import main as cli

            pred = work / "pred"
            fold = REPO / "configs" / "brats18" / "folds" / f"fold{args.fold}.yaml"
            from ada_bench.tasks import base_files

            files = [*base_files(Path(args.config).parent), Path(args.config), fold]
            cli(["predict", *(a for f in files for a in ("-c", str(f))), "--data.root", args.root,
                 "--data.cache_dir", str(work / "cache"), "--model.source_checkpoint", args.ckpt,
                 "--trainer.logger", "false", "--trainer.default_root_dir", str(work),
                 "--writer.output_dir", str(pred)])
            checks = []
            for f in sorted(pred.glob("*_pred.nii.gz")):
                cid = f.name.removesuffix("_pred.nii.gz")
                ref = nib.load(Path(args.root) / cid / f"{cid}_flair.nii.gz")
                img = nib.load(f)
                ok = img.shape == ref.shape and np.allclose(img.affine, ref.affine, atol=1e-5)
                labels = sorted(np.unique(np.asarray(img.dataobj)).astype(int).tolist())
                checks.append({"case": cid, "shape": list(img.shape), "same_affine": bool(ok),
                               "labels": labels})
                print(f"{f.name}: shape {img.shape} (original {ref.shape}), affine equal: {ok}, "
                      f"labels {labels}", flush=True)
            found["predictions"] = checks
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
