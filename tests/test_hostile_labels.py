"""Hostile inputs, round three (issue 28): labels as annotation tools save them.

Every case goes through ``lightning-ada fit`` with the file oracle (``cli_main``): a run waits for
its label (exit 3), the label is delivered the way a tool or an annotator would, and the same
command with ``--ckpt_path <run>/checkpoints/pending.ckpt`` either takes it (exit 0) or leaves
the request open with the reason (exit 3) and the run folder byte-identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

# cli_helpers imports the CLI before any test captures stderr (why: see there)
from cli_helpers import run_cli as run_cli_stderr
from cli_helpers import snapshot

CONF = Path(__file__).parent / "conf"


def run_cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """Run ``lightning-ada ARGS`` in this process; return (exit code, stdout + stderr)."""
    return run_cli_stderr(args, monkeypatch, capsys, stdout=True)


def fit_args(root: Path, run: Path, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(root),
        "--data.phantom", "null", "--trainer.default_root_dir", str(run),
        "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--active.budget", "1",
        "--active.oracle", "files", "--active.oracle.wait", "false", *extra,
    ]


@pytest.fixture(scope="module")
def waiting_master(
    phantom_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, str]:
    """A run waiting for its first label (its folder, a pristine copy, the queried case)."""
    from lightning_ada.errors import AnnotationPending
    from lightning_ada.main import main

    run = tmp_path_factory.mktemp("waiting") / "run"
    with pytest.raises(AnnotationPending) as pending:
        main(fit_args(phantom_root, run))
    [awaiting] = pending.value.awaiting
    case = Path(awaiting).name.removesuffix(".nii.gz")
    # one resume with nothing delivered: the folder as any later resume finds it (its config
    # names --ckpt_path)
    with pytest.raises(AnnotationPending):
        main(resume_args(phantom_root, run))
    pristine = run.with_name("pristine")
    shutil.copytree(run, pristine, symlinks=True)
    return run, pristine, case


def resume_args(root: Path, run: Path) -> list[str]:
    return fit_args(root, run, "--ckpt_path", str(run / "checkpoints" / "pending.ckpt"))


@pytest.fixture
def waiting(waiting_master: tuple[Path, Path, str]) -> tuple[Path, str]:
    """The waiting run, as it was, at its own path (its checkpoint names its folder)."""
    run, pristine, case = waiting_master
    shutil.rmtree(run)
    shutil.copytree(pristine, run, symlinks=True)
    return run, case


def reference(root: Path, case: str) -> nib.Nifti1Image:
    return nib.load(root / case / f"{case}_seg.nii.gz")


def delivered(run: Path) -> list[dict[str, Any]]:
    return [q for q in json.loads((run / "query_log.json").read_text()) if "case_id" in q]


def still_open(
    root: Path, run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    """Resume; assert the run waits again (exit 3) and its folder is unchanged; return the
    line giving the reason."""
    before = snapshot(run)
    code, out = run_cli(resume_args(root, run), monkeypatch, capsys)
    assert code == 3, out[-3000:]
    assert "Traceback" not in out
    [line] = [x for x in out.splitlines() if x.startswith("not taken yet: ")]
    assert snapshot(run) == before  # nothing written: checkpoint, query log, config, labels
    return line


# ------------------------------------------------------------------ .nii
def test_uncompressed_label_is_taken(
    phantom_root: Path, waiting: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    run, case = waiting
    request = json.loads((run / "requests" / f"round_0_{case}.json").read_text())
    assert request["or_uncompressed_as"] == str(run / "labels" / f"{case}.nii")
    label = run / "labels" / f"{case}.nii"
    label.parent.mkdir(exist_ok=True)
    nib.save(reference(phantom_root, case), label)  # what ITK-SNAP and Slicer write by default
    code, out = run_cli(resume_args(phantom_root, run), monkeypatch, capsys)
    assert code == 0, out[-3000:]
    [entry] = delivered(run)
    assert (entry["case_id"], entry["label_path"]) == (case, str(label))


def test_two_labels_for_one_request_stay_open_naming_both(
    phantom_root: Path, waiting: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    run, case = waiting
    (run / "labels").mkdir(exist_ok=True)
    for name in (f"{case}.nii.gz", f"{case}.nii"):
        nib.save(reference(phantom_root, case), run / "labels" / name)
    line = still_open(phantom_root, run, monkeypatch, capsys)
    assert f"{case}.nii.gz and " in line and f"{case}.nii: two labels for one request" in line


# ------------------------------------------------------------------ axis order
def _other_axis_order(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same voxels and positions, stored with the first two axes flipped (LPS <-> RAS)."""
    out = img.as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))
    assert "".join(nib.aff2axcodes(out.affine)) != "".join(nib.aff2axcodes(img.affine))
    return out


def test_label_in_another_axis_order_is_reoriented_and_recorded(
    phantom_root: Path, waiting: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    run, case = waiting
    ref = reference(phantom_root, case)
    label = run / "labels" / f"{case}.nii.gz"
    label.parent.mkdir(exist_ok=True)
    nib.save(_other_axis_order(ref), label)  # e.g. a tool that saves RAS for an LPS image
    code, out = run_cli(resume_args(phantom_root, run), monkeypatch, capsys)
    assert code == 0, out[-3000:]
    [entry] = delivered(run)
    used = run / "labels_reoriented" / f"{case}.nii.gz"
    assert entry["label_path"] == str(used)
    assert entry["oracle"] == {"reoriented": "RAS -> LPS", "delivered_file": str(label)}
    trained_on = nib.load(used)  # the image's axis order and affine, the same voxels
    assert np.array_equal(np.asarray(trained_on.dataobj), np.asarray(ref.dataobj))
    assert np.allclose(trained_on.affine, ref.affine)


def test_misaligned_label_in_another_axis_order_stays_refused(
    phantom_root: Path, waiting: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    run, case = waiting
    moved = _other_axis_order(reference(phantom_root, case))
    affine = moved.affine.copy()
    affine[0, 3] += 7.0  # 7 mm off: a real misalignment
    label = run / "labels" / f"{case}.nii.gz"
    label.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(moved.dataobj), affine), label)
    line = still_open(phantom_root, run, monkeypatch, capsys)
    assert str(label) in line and "affine differs" in line
    assert "not the image's grid in another axis order either" in line


# ------------------------------------------------------------------ gzip integrity
@pytest.mark.parametrize("damage", ["no trailer", "crc"])
def test_gzip_label_failing_its_integrity_check_stays_open(
    phantom_root: Path, waiting: tuple[Path, str], damage: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    run, case = waiting
    raw = (phantom_root / case / f"{case}_seg.nii.gz").read_bytes()
    label = run / "labels" / f"{case}.nii.gz"
    label.parent.mkdir(exist_ok=True)
    if damage == "no trailer":  # a copy cut short: the data is all there, the CRC and length not
        label.write_bytes(raw[:-8])
    else:
        broken = bytearray(raw)
        broken[-8] ^= 0xFF
        label.write_bytes(bytes(broken))
    line = still_open(phantom_root, run, monkeypatch, capsys)
    assert str(label) in line and "damaged gzip file" in line and "CRC-32 and length" in line


# ------------------------------------------------------------------ symbolic links
def test_label_linked_to_the_annotators_folder_is_read_and_recorded(
    phantom_root: Path, waiting: tuple[Path, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    run, case = waiting
    own = tmp_path / "annotator" / "work" / f"{case}_final.nii.gz"
    own.parent.mkdir(parents=True)
    nib.save(reference(phantom_root, case), own)
    link = run / "labels" / f"{case}.nii.gz"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(own)
    code, out = run_cli(resume_args(phantom_root, run), monkeypatch, capsys)
    assert code == 0, out[-3000:]
    [entry] = delivered(run)
    assert entry["label_path"] == str(link) and entry["oracle"] == {"label_link_target": str(own)}


@pytest.mark.parametrize("target", ["missing", "bad"])
def test_label_linked_to_a_missing_or_bad_file_keeps_the_request_open(
    phantom_root: Path, waiting: tuple[Path, str], tmp_path: Path, target: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    run, case = waiting
    own = tmp_path / "annotator" / f"{case}.nii.gz"
    if target == "bad":
        own.parent.mkdir(parents=True)
        own.write_bytes(b"not a NIfTI")
    link = run / "labels" / f"{case}.nii.gz"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(own)
    line = still_open(phantom_root, run, monkeypatch, capsys)
    assert str(link) in line
    expected = f"a symbolic link to {own}, which does not exist" if target == "missing" else \
        "unreadable or truncated NIfTI header"
    assert expected in line


# ------------------------------------------------------------------ a labels folder on a share
def _flaky_share(
    monkeypatch: pytest.MonkeyPatch, labels: Path, failures: int, deliver: Path | None,
    source: Path,
) -> list[int]:
    """Make every look into ``labels`` fail ``failures`` times (a stale network handle), then
    let the annotator's file appear at ``deliver``; return the count of failed looks."""
    real = Path.exists
    failed = [0]

    def exists(self: Path, *args: Any, **kwargs: Any) -> bool:
        if self.parent == labels:
            if failed[0] < failures:
                failed[0] += 1
                raise OSError(116, "Stale file handle", str(self))
            if deliver is not None and not real(deliver):
                labels.mkdir(exist_ok=True)
                shutil.copy(source, deliver)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    return failed


def test_labels_folder_briefly_unavailable_is_retried_not_fatal(
    phantom_root: Path, waiting: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    run, case = waiting
    label = run / "labels" / f"{case}.nii.gz"
    failed = _flaky_share(monkeypatch, run / "labels", 5, label,
                          phantom_root / case / f"{case}_seg.nii.gz")
    caplog.set_level("INFO")
    args = [*resume_args(phantom_root, run), "--active.oracle.wait", "true",
            "--active.oracle.poll", "0.01", "--active.oracle.timeout", "60"]
    code, out = run_cli(args, monkeypatch, capsys)
    assert code == 0, out[-3000:]
    assert failed[0] == 5
    [entry] = delivered(run)
    assert entry["label_path"] == str(label) and entry["oracle"] == {"unavailable_looks": 5}
    logged = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(logged) == 1 and "Stale file handle" in logged[0] and "retrying every 0.01 s" in logged[0]


def test_labels_folder_unavailable_without_waiting_leaves_the_request_pending(
    phantom_root: Path, waiting: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    run, _case = waiting
    failed = _flaky_share(monkeypatch, run / "labels", 1000, None, Path())
    before = snapshot(run)
    args = [*resume_args(phantom_root, run), "--active.oracle.poll", "0.01"]
    code, out = run_cli(args, monkeypatch, capsys)
    assert code == 3, out[-3000:]  # pending, as with no label yet: resume later
    assert failed[0] == 4  # the look and its 3 retries (--active.oracle.retries)
    assert f"not taken yet: the labels folder {run / 'labels'} could not be read" in out
    monkeypatch.undo()
    assert snapshot(run) == before
