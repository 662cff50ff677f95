"""A target case without one of its modalities (issue 28): refused naming the case and the
modality, or, with ``--data.missing_modality zero_fill``, run with that channel zero-filled and
flagged; modality dropout in training; the measurement harness (``scripts/missing_modality.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

# cli_helpers imports the CLI before any test captures stderr (why: see there)
from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(__file__).parent / "conf"


def without(phantom_root: Path, folder: Path, modality: str, split: str) -> tuple[Path, list[str]]:
    """A datalist of the tiny phantom whose ``split`` cases list no ``modality`` file."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from missing_modality import without as write

    data = json.loads((phantom_root / "dataset.json").read_text())
    ids = [c["case_id"] for c in data["cases"] if c.get("split") == split]
    if split == "test":
        return write(phantom_root / "dataset.json", modality, folder / "datalist.json"), ids
    for case in data["cases"]:
        case["images"] = [str((phantom_root / p).resolve()) for p in case["images"]]
        case["label"] = str((phantom_root / case["label"]).resolve())
        case["modality_labels"] = {k: str((phantom_root / v).resolve()) for k, v in case["modality_labels"].items()}
        if case.get("split") == split:
            case["images"][case["modalities"].index(modality)] = None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datalist.json").write_text(json.dumps(data))
    return folder / "datalist.json", ids


def tiny(sub: str, root: Path, *extra: str) -> list[str]:
    return [sub, "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(root),
            "--data.phantom", "null", *extra]


def test_case_without_a_modality_is_refused_naming_the_case_and_the_modality(
    phantom_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    datalist, ids = without(phantom_root, tmp_path / "data", "t2", "test")
    run = tmp_path / "run"
    code, err = run_cli(tiny("fit", datalist, "--trainer.default_root_dir", str(run)), monkeypatch, capsys)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert f"case {ids[0]!r} has no 't2' image; " in lines[0]
    assert "set data.missing_modality zero_fill" in lines[0] and "data.modality_dropout" in lines[0]
    assert not run.exists()


def test_brats_folder_without_a_modality_file_is_refused_or_read_as_missing(tmp_path: Path) -> None:
    from lightning_ada.data.readers import read_brats
    from lightning_ada.errors import DataError

    case = tmp_path / "Brats15_x_1"
    case.mkdir()
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    for m in ("flair", "t1ce", "seg"):  # BraTS 2015-style: FLAIR and T1c only
        nib.save(img, case / f"Brats15_x_1_{m}.nii.gz")
    with pytest.raises(DataError, match=r"case 'Brats15_x_1' has no modality 't1'; .*zero_fill"):
        read_brats(tmp_path)
    [c] = read_brats(tmp_path, missing_ok=True)
    assert c.missing == ("t1", "t2") and c.reference_image.endswith("_flair.nii.gz")
    item = c.to_item()
    assert item["zero_channels"] == [1, 3] and len(item["image"]) == 4


@pytest.mark.slow
def test_zero_filled_test_and_predictions_are_flagged(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path,
) -> None:
    from lightning_ada.main import main

    datalist, ids = without(phantom_root, tmp_path / "data", "t2", "test")
    with pytest.warns(UserWarning, match=r"2 cases lack a modality, zero-filled .*: glioma_test_000: t2"):
        cli = main(tiny("test", datalist, "--data.missing_modality", "zero_fill",
                        "--ckpt_path", str(source_ckpt), "--eval_dir", str(tmp_path / "test")))
    assert 0.0 <= float(cli.trainer.callback_metrics["test/dice_mean"]) <= 1.0
    image = cli.datamodule.item(ids[0])["image"]
    assert bool((image[3] == 0).all()) and bool(image[:3].abs().sum(dim=(1, 2, 3)).gt(0).all())
    out = tmp_path / "predictions"
    main(tiny("predict", datalist, "--data.missing_modality", "zero_fill", "--ckpt_path", str(source_ckpt),
              "--eval_dir", str(tmp_path / "predict"), "--writer.output_dir", str(out)))
    assert json.loads((out / "zero_filled.json").read_text()) == {i: ["t2"] for i in ids}
    header = nib.load(out / f"{ids[0]}_pred.nii.gz").header
    assert header["descrip"].tobytes().rstrip(b"\x00") == b"zero-filled: t2"


def test_fit_with_zero_filled_pool_cases_and_modality_dropout_flags_the_queries(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path,
) -> None:
    from lightning_ada.main import main

    datalist, _ = without(phantom_root, tmp_path / "data", "t1", "pool")
    out = tmp_path / "run"
    main(tiny("fit", datalist, "--data.missing_modality", "zero_fill", "--data.modality_dropout", "0.5",
              "--model.source_checkpoint", str(source_ckpt), "--trainer.default_root_dir", str(out),
              "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0",
              "--active.elect_modality", "true"))
    log = [q for q in json.loads((out / "query_log.json").read_text()) if "case_id" in q]
    assert len(log) == 2
    for q in log:
        assert q["missing_modalities"] == ["t1"]
        assert q["modality"] != "t1" and set(q["election_dice"]) == {"flair", "t1ce", "t2"}


def test_modality_dropout_zeroes_one_present_channel() -> None:
    from lightning_ada.data.transforms import RandModalityDropoutd, training_augmentation

    always = RandModalityDropoutd(keys="image", prob=1.0)
    always.set_random_state(seed=0)
    image = torch.ones(4, 3, 3, 3)
    dropped = [int((always({"image": image})["image"].sum(dim=(1, 2, 3)) == 0).nonzero()[0])
               for _ in range(40)]
    assert sorted(set(dropped)) == [0, 1, 2, 3]  # one channel each time, every one in turn
    one_left = torch.zeros(4, 3, 3, 3)
    one_left[2] = 1
    assert torch.equal(always({"image": one_left})["image"], one_left)  # never the last one
    never = training_augmentation([3, 3, 3], augment=False)
    assert not any(isinstance(t, RandModalityDropoutd) for t in never.transforms)


def test_missing_modality_summary_pairs_the_seeds(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import missing_modality

    rows = [{"seed": s, "dropout": d, "removed": m, "dice_mean": v}
            for s, base in ((0, 0.60), (1, 0.50), (2, 0.55))
            for d, m, v in ((0.0, "none", base), (0.5, "none", base - 0.01),
                            (0.0, "t2", base - 0.30), (0.5, "t2", base - 0.10))]
    rows.append({"seed": 3, "dropout": 0.0, "removed": "t2", "dice_mean": 0.1})  # unpaired: left out
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    args = missing_modality.parser().parse_args(["--out", str(tmp_path)])
    table = missing_modality.summary(args)
    assert "| none | 3 | 55.0 ± 5.0 | 54.0 ± 5.0 | -1.0 | [-1.0, -1.0] |" in table
    assert "| t2 | 3 | 25.0 ± 5.0 | 45.0 ± 5.0 | +20.0 | [+20.0, +20.0] |" in table


@pytest.mark.slow
def test_missing_modality_harness_pairs_models_with_and_without_dropout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import missing_modality

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mm"
    argv = ["--out", str(out), "--config", str(CONF / "source_tiny.yaml"), "--seeds", "0",
            "--remove", "t2", "--data-root", str(tmp_path / "phantom_seed{seed}")]
    assert missing_modality.main(argv) == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["dropout"], r["removed"]) for r in rows} == {(0.0, "none"), (0.0, "t2"), (0.5, "none"), (0.5, "t2")}
    assert all(0.0 <= r["dice_mean"] <= 1.0 for r in rows)
    table = (out / "missing_modality.md").read_text()
    assert "| t2 | 1 |" in table and "| none | 1 |" in table
    assert missing_modality.main(argv) == 0  # a second call finds everything done
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
