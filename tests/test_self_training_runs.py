"""Self-training and the other issue-14 additions through ``lightning-ada fit``: exact resume in
the middle of a teacher pass, and the overlay configs of ``configs/additions`` composed on a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_ada.active.self_training as self_training
from lightning_ada.active.callback import ActiveQueryCallback
from lightning_ada.active.self_training import SelfTraining
from lightning_ada.augment.tumour_contrast import TumourContrast
from lightning_ada.errors import AnnotationPending
from lightning_ada.main import main
from lightning_ada.models.sparse_finetune import SparseFineTuning

CONF = Path(__file__).parent / "conf"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ADDITIONS = CONFIGS / "additions"


def _st_args(root: Path, ckpt: Path, out: Path) -> list[str]:
    return [
        "fit", "-c", str(CONF / "random_tiny.yaml"),
        "--data.root", str(root), "--model.source_checkpoint", str(ckpt),
        "--trainer.default_root_dir", str(out),
        "--trainer.max_epochs", "4", "--trainer.limit_val_batches", "0",
        "--active.budget", "1", "--active.stride", "1",
        "--active.self_training", "lightning_ada.active.self_training.SelfTraining",
        "--active.self_training.warmup_epochs", "1", "--active.self_training.every", "1",
        "--active.self_training.passes", "3", "--active.self_training.top_fraction", "0.6",
        "--active.self_training.ratio", "0.5",
    ]


def _final(out: Path) -> tuple[list[tuple], list[dict]]:
    """(the pseudo-labelled set of the last checkpoint, comparable; the self-training log)."""
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    records = [
        (r["case_id"], Path(r["path"]).relative_to(out).as_posix(), r["teacher_pass"], r["epoch"],
         r["global_step"], round(r["confidence"], 6), r["sha256"])
        for r in ckpt["ActiveDataModule"]["pseudo"]["records"]
    ]
    log = json.loads((out / "self_training_log.json").read_text())
    return records, log


@pytest.mark.slow  # a long end-to-end run: `make test-all` runs it
def test_a_run_interrupted_in_the_middle_of_a_pass_resumes_to_the_same_pseudo_labelled_set(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "reference"
    main(_st_args(phantom_root, source_ckpt, reference))
    ref_records, ref_log = _final(reference)
    passes = [e for e in ref_log if e["event"] == "pass"]
    assert [(e["pass"], e["epoch"]) for e in passes] == [(0, 1), (1, 2), (2, 3)]
    assert [e["candidates"] for e in passes] == [5, 5, 5]  # 6 pool cases, 1 queried
    assert len(ref_records) == 3 and {r[2] for r in ref_records} == {2}  # ceil(0.6 * 5), pass 2
    files = sorted(p.name for p in (reference / "pseudo_labels" / "pass_02").iterdir())
    assert files == sorted(f"{r[0]}.npy" for r in ref_records)  # only the selected cases' files

    # the same run, stopped while pass 1 writes its third pseudo-label
    out = tmp_path / "interrupted"
    real_save, saved = self_training.save_label, []

    def save_then_fail(label: torch.Tensor, path: Path) -> str:
        saved.append(path)
        if len(saved) == 5 + 3:
            raise RuntimeError("interrupted in the middle of a teacher pass")
        return real_save(label, path)

    monkeypatch.setattr(self_training, "save_label", save_then_fail)
    with pytest.raises(RuntimeError, match="middle of a teacher pass"):
        main(_st_args(phantom_root, source_ckpt, out))
    monkeypatch.setattr(self_training, "save_label", real_save)
    assert len(list((out / "pseudo_labels" / "pass_01").glob("*.npy"))) == 2  # half a pass
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0  # the last checkpoint holds pass 0's set only
    assert {r["teacher_pass"] for r in ckpt["ActiveDataModule"]["pseudo"]["records"]} == {0}

    last = out / "checkpoints" / "last.ckpt"
    main([*_st_args(phantom_root, source_ckpt, out), "--ckpt_path", str(last)])
    records, log = _final(out)
    assert records == ref_records
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in log]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in ref_log]


@pytest.mark.slow
def test_the_additions_compose_on_the_command_line_and_run(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    """``-c base -c random -c st -c gba -c dgst`` on a tiny phantom: each addition is in force,
    the callbacks of the earlier files stay (dgst.yaml appends), and a short fit uses them."""
    out = tmp_path / "run"
    args = [
        "fit", "-c", str(CONFIGS / "phantom" / "base.yaml"),
        "-c", str(CONFIGS / "phantom" / "glioma" / "random.yaml"),
        *(x for name in ("st", "gba", "dgst") for x in ("-c", str(ADDITIONS / f"{name}.yaml"))),
        "--data.root", str(phantom_root), "--data.phantom", "null",
        "--data.patch_size", "[16, 16, 16]", "--data.divisible_by", "4",
        "--data.batch_size", "2", "--data.iterations_per_epoch", "2",
        "--model.filters", "[4, 8, 16]", "--model.roi_size", "[16, 16, 16]",
        "--model.source_checkpoint", str(source_ckpt),
        "--trainer.default_root_dir", str(out), "--trainer.max_epochs", "3",
        "--trainer.enable_progress_bar", "false", "--trainer.check_val_every_n_epoch", "1",
        "--active.budget", "1",
        "--active.self_training.warmup_epochs", "1", "--active.self_training.every", "1",
    ]
    cli = main(args[1:], run=False)
    callbacks = cli.trainer.callbacks
    assert any(isinstance(c, ModelCheckpoint) for c in callbacks)  # base.yaml's: kept
    sparse = [c for c in callbacks if isinstance(c, SparseFineTuning)]
    assert len(sparse) == 1 and sparse[0].mode == "dgst" and sparse[0].n_keep == 2
    active = next(c for c in callbacks if isinstance(c, ActiveQueryCallback))
    assert isinstance(active.self_training, SelfTraining) and active.self_training.ratio == 0.5
    contrast = cli.datamodule.tumour_contrast
    assert isinstance(contrast, TumourContrast) and contrast.blend and contrast.prob == 0.5

    main(args)
    _, log = _final(out)
    assert [e["epoch"] for e in log if e["event"] == "pass"] == [1, 2]
    assert (out / "config.yaml").is_file()
    saved = (out / "config.yaml").read_text()
    assert "SparseFineTuning" in saved and "TumourContrast" in saved and "SelfTraining" in saved


def test_without_the_additions_nothing_changes(phantom_root: Path, source_ckpt: Path) -> None:
    cli = main(
        ["-c", str(CONF / "random_tiny.yaml"), "--data.root", str(phantom_root),
         "--model.source_checkpoint", str(source_ckpt)],
        run=False,
    )
    active = next(c for c in cli.trainer.callbacks if isinstance(c, ActiveQueryCallback))
    assert active.self_training is None and cli.datamodule.tumour_contrast is None
    assert not any(isinstance(c, SparseFineTuning) for c in cli.trainer.callbacks)
    assert "tumour_contrast" not in cli.datamodule.hparams  # checkpoints stay weights-only


def test_the_harness_composes_the_additions_like_the_command_line(
    phantom_root: Path, source_ckpt: Path
) -> None:
    """``ada_bench.runner.compose`` (the benchmark's ``-c`` merge) appends ``callbacks+`` too."""
    from ada_bench.runner import compose, merge

    from lightning_ada.cli.short_names import expand_config

    files = [
        CONFIGS / "power" / "glioma" / "target.yaml",
        *(ADDITIONS / f"{n}.yaml" for n in ("st", "gba", "dgst")),
    ]
    config = compose(files)
    classes = [c["class_path"].rsplit(".", 1)[1] for c in config["trainer"]["callbacks"]]
    assert classes == ["ModelCheckpoint", "SparseFineTuning"] and "callbacks+" not in config["trainer"]
    twice = compose([*files, ADDITIONS / "dgst.yaml"])["trainer"]["callbacks"]
    assert twice[-2:] == config["trainer"]["callbacks"][-1:] * 2  # each dgst.yaml appends
    everything = compose([files[0], ADDITIONS / "all.yaml"])
    assert everything["trainer"]["callbacks"] == config["trainer"]["callbacks"]
    assert everything["active"] == config["active"] and everything["data"] == config["data"]
    assert merge({"a": {"x+": [1]}}, {"a": {"x+": [2]}}) == {"a": {"x+": [1, 2]}}
    assert merge({"a": {"x+": [1]}}, {"a": {"x": [3]}}) == {"a": {"x": [3]}}  # plain replaces
    config["data"]["root"] = str(phantom_root)
    config["data"]["phantom"] = None
    config["model"]["source_checkpoint"] = str(source_ckpt)
    config["model"]["filters"] = [4, 8, 16]
    cli = main(args=expand_config(config), run=False)
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert names.count("SparseFineTuning") == 1 and "ModelCheckpoint" in names
    active = next(c for c in cli.trainer.callbacks if isinstance(c, ActiveQueryCallback))
    assert active.self_training is not None and cli.datamodule.tumour_contrast is not None


@pytest.mark.slow
def test_the_stop_rule_ends_the_passes_on_a_small_change_of_the_held_out_dice(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    """With a validation split, the held-out Dice is measured before each pass; a change below
    ``stop_delta`` (here any change: 1.0) stops the passes and keeps the last pseudo-labels."""
    out = tmp_path / "run"
    main([*_st_args(phantom_root, source_ckpt, out), "--data.val_split", "0.34",
          "--active.self_training.stop_delta", "1.0"])
    records, log = _final(out)
    assert [e["event"] for e in log] == ["pass", "stopped"]
    first, stop = log
    assert first["candidates"] == 3  # 6 pool cases: 2 held out for validation, 1 queried
    assert 0.0 <= first["held_out_dice"] <= 1.0 and stop["epoch"] == 2
    assert stop["previous_held_out_dice"] == first["held_out_dice"]
    assert {r[2] for r in records} == {0}  # pass 0's pseudo-labels stay in use


@pytest.mark.slow  # a long end-to-end run: `make test-all` runs it
def test_a_pass_due_when_the_file_oracle_stopped_the_run_is_made_on_the_resume(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    """The file oracle stops the run at the end of epoch 0, where pass 0 is due; the resume
    that brings the label makes that pass before epoch 1, as an uninterrupted run does."""
    out = tmp_path / "run"
    args = [
        *_st_args(phantom_root, source_ckpt, out), "--active.budget", "2",
        "--active.oracle", "files", "--active.oracle.wait", "false",
    ]
    resume: list[str] = []
    for _ in range(2):  # round 0 before epoch 0, round 1 after epoch 0
        with pytest.raises(AnnotationPending) as pending:
            main([*args, *resume])
        [label] = [Path(p) for p in pending.value.awaiting]
        case_id = label.name.removesuffix(".nii.gz")
        label.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(phantom_root / case_id / f"{case_id}_seg.nii.gz", label)
        resume = ["--ckpt_path", str(pending.value.checkpoint)]
    main([*args, *resume])
    _, log = _final(out)
    passes = [e for e in log if e["event"] == "pass"]
    assert [(e["pass"], e["epoch"]) for e in passes] == [(0, 1), (1, 2), (2, 3)]
    assert [e["candidates"] for e in passes] == [4, 4, 4]  # 6 pool cases, 2 labelled
