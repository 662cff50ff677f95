"""Hostile inputs, round two (data side), each through the real command line where it can be.

A refused input ends with exactly one ``error: ...`` line on stderr, exit code 2, and the run
folder as it was. Classes: values that overflow once scaled and cast (or preprocessed), case ids
that would escape their folder, labels and images that changed under a resumed run, a label
that predates its request, headers that declare more data than the file or the limit allows.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lightning_ada.active.oracles import Answer, Request
from lightning_ada.active.oracles.files import FileOracle
from lightning_ada.cases import Case
from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.data.validation import validate_case
from lightning_ada.errors import DataError, UnsafePathError
from lightning_ada.io import atomic_path, safe_child, write_json_atomic
from lightning_ada.main import cli_main


def file_oracle(run: Path, case: Case | None = None, **options: object) -> FileOracle:
    """A FileOracle configured as the callback does, with a pool view of ``case`` only."""
    from types import SimpleNamespace

    from lightning_ada.data.validation import validate_label_file

    def validate(path: str, case_id: str, allow_empty: bool = False) -> None:
        assert case is not None and case_id == case.case_id
        validate_label_file(path, case.images[0], [1, 2, 4], allow_empty)

    oracle = FileOracle(wait=False, **options)  # type: ignore[arg-type]
    oracle.configure(run, SimpleNamespace(label_values=[1, 2, 4], validate_label=validate))  # type: ignore[arg-type]
    return oracle

CONF = Path(__file__).parent / "conf"
CASE = "glioma_pool_002"


@pytest.fixture
def data(phantom_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny phantom."""
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> str:
    """Run ``lightning-ada`` with ``args``; assert exit 2 with one ``error:`` line; return it."""
    monkeypatch.setattr(sys, "argv", ["lightning-ada", *args])
    with pytest.raises(SystemExit) as stop:
        cli_main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert stop.value.code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def fit_args(root: Path, run: Path, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(root),
        "--data.phantom", "null", "--trainer.default_root_dir", str(run), *extra,
    ]


def scaled_int16(path: Path, slope: float) -> None:
    """Store ``path`` as int16 up to 30000 with header scale ``slope`` (finite on disk)."""
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float64)
    ramp = 30000 - np.arange(data.size).reshape(data.shape) % 7
    stored = np.where(data != 0, ramp, 0).astype(np.int16)
    out = nib.Nifti1Image(stored, img.affine)
    out.header.set_slope_inter(slope, 0.0)
    nib.save(out, path)


# ------------------------------------------------------------------ 1. what the network sees
def test_overflow_after_header_scaling_is_refused_naming_the_file(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = data / CASE / f"{CASE}_t2.nii.gz"
    scaled_int16(target, 1e36)  # 30000 * 1e36 is finite in float64, inf in float32
    stored = nib.load(target)
    assert np.isfinite(np.asarray(stored.dataobj)).all()  # the stored values look fine
    run = tmp_path / "run"
    line = refused(monkeypatch, capsys, fit_args(data, run))
    assert str(target) in line and "overflow float32" in line
    assert snapshot(run) == {}


def test_non_finite_after_preprocessing_is_refused_naming_the_case(data: Path) -> None:
    target = data / CASE / f"{CASE}_flair.nii.gz"
    scaled_int16(target, 1e34)  # up to 3e38: finite as float32, but its z-score overflows
    with pytest.raises(DataError, match=f"case {CASE}: .*non-finite voxels after preprocessing"):
        ActiveDataModule(root=str(data), divisible_by=4).setup("fit")


# ------------------------------------------------------------------ 2. case ids as file names
@pytest.mark.parametrize(
    "bad_id", ["../../../escaped_case", "/tmp/absolute_case", "a b", ".hidden"]
)
def test_unsafe_case_id_is_refused_at_read_time(
    data: Path, tmp_path: Path, bad_id: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    ds = json.loads((data / "dataset.json").read_text())
    entry = next(c for c in ds["cases"] if c["case_id"] == CASE)
    entry["case_id"] = bad_id
    (data / "dataset.json").write_text(json.dumps(ds))
    run = tmp_path / "run"
    line = refused(monkeypatch, capsys, fit_args(data, run))
    assert f"case id {bad_id!r} is not allowed" in line and "dataset.json" in line
    assert snapshot(run) == {}
    assert not (tmp_path / "escaped_case_pred.nii.gz").exists()


def test_files_named_after_cases_stay_in_their_folder(tmp_path: Path) -> None:
    folder = tmp_path / "requests"
    assert safe_child(folder, "round_0_case.json") == folder / "round_0_case.json"
    for name in ["../x.json", "/etc/passwd", "..", "a/b.json", ""]:
        with pytest.raises(UnsafePathError):
            safe_child(folder, name)
    folder.mkdir()
    (folder / "link.json").symlink_to(tmp_path / "outside.json")
    with pytest.raises(UnsafePathError, match="resolves outside"):
        safe_child(folder, "link.json")
    oracle = file_oracle(tmp_path / "run")
    for bad in ["../../escaped_case", "/abs"]:
        with pytest.raises(UnsafePathError):
            oracle.label_path(bad)
        with pytest.raises(UnsafePathError):
            oracle.request_path(0, bad)


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not mkstemp's 0600


# ------------------------------------------------------------------ 5. labels bound to content
def _labeled_state(root: Path) -> tuple[dict, str]:
    dm = ActiveDataModule(root=str(root), divisible_by=4)
    dm.setup("fit")
    cid = dm.unlabeled_ids()[0]
    dm.label(cid, dm.case(cid).modality_labels["t1ce"], "t1ce", round=0, epoch=0)
    return dm.state_dict(), cid


def _reload(root: Path, state: dict) -> ActiveDataModule:
    dm = ActiveDataModule(root=str(root), divisible_by=4)
    dm.load_state_dict(state)
    dm.setup("fit")
    return dm


def test_resume_refuses_a_changed_label_or_image(data: Path, tmp_path: Path) -> None:
    state, cid = _labeled_state(data)
    annotation = state["pool"]["labeled"][cid]
    assert len(annotation["label_sha256"]) == 64 and len(annotation["images_sha256"]) == 64
    assert _reload(data, state).pool.labeled == [cid]  # unchanged files: resumes
    # a copy of the same dataset elsewhere has the same content: resumes
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    moved = json.loads(json.dumps(state).replace(str(data), str(copy)))
    assert _reload(copy, moved).pool.labeled == [cid]

    label = Path(annotation["label_path"])
    img = nib.load(label)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), label)
    with pytest.raises(DataError, match=f"content changed since case {cid} was labeled"):
        _reload(data, state)
    # an image of the labeled case replaced (another dataset with the same ids)
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    flair = other / cid / f"{cid}_flair.nii.gz"
    img = nib.load(flair)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 1.0, img.affine), flair)
    moved = json.loads(json.dumps(state).replace(str(data), str(other)))
    with pytest.raises(DataError, match=f"case {cid}: images differ"):
        _reload(other, moved)


def test_resume_against_a_pool_without_the_labeled_case(data: Path) -> None:
    state, cid = _labeled_state(data)
    dm = ActiveDataModule(root=str(data), divisible_by=4)
    dm.setup("fit")
    others = [c for c in dm.split_ids["pool"] if c != cid]
    smaller = ActiveDataModule(
        root=str(data), divisible_by=4, splits={"pool": others, "test": dm.split_ids["test"]}
    )
    smaller.load_state_dict(state)
    with pytest.raises(DataError, match=rf"saved pool state does not fit: .*\['{cid}'\]"):
        smaller.setup("fit")


@pytest.mark.slow
def test_resume_with_a_changed_label_through_the_cli(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_ada.main import main

    run = tmp_path / "run"
    main(fit_args(data, run))
    log = json.loads((run / "query_log.json").read_text())
    label = Path(log[0]["label_path"])
    img = nib.load(label)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), label)
    before = snapshot(run)
    before.pop("config.yaml")  # LightningCLI re-saves the config before the state is restored
    last = str(run / "checkpoints" / "last.ckpt")
    args = fit_args(data, run, "--trainer.max_epochs", "4", "--ckpt_path", last)
    line = refused(monkeypatch, capsys, args)
    assert str(label) in line and f"since case {log[0]['case_id']} was labeled" in line
    after = snapshot(run)
    after.pop("config.yaml")
    assert after == before  # checkpoints and query log untouched


def test_label_present_before_its_request_needs_confirmation(
    tmp_path: Path, phantom_root: Path
) -> None:
    from lightning_ada.data.readers import read_datalist

    case = next(c for c in read_datalist(phantom_root / "dataset.json") if c.case_id == CASE)
    run = tmp_path / "run"
    stale = run / "labels" / f"{CASE}.nii.gz"
    stale.parent.mkdir(parents=True)
    shutil.copy(case.label, stale)  # left over (another run, a colleague, a wrong case)
    request = Request(case, "flair", {"round": 0, "case_id": CASE})
    oracle = file_oracle(run, case)
    with pytest.warns(UserWarning, match="already exists before its request"):
        oracle.write_request(request)
    recorded = json.loads(oracle.request_path(0, CASE).read_text())
    assert recorded["label_present_before_request"]["mtime_ns"] == stale.stat().st_mtime_ns
    assert oracle.ask(request).status == "pending"  # not consumed silently
    accepting = file_oracle(run, case, accept_existing_labels=True).ask(request)
    assert (accepting.status, accepting.label_path) == ("delivered", str(stale))
    shutil.copy(case.label, stale)  # the annotator re-saves it (later): confirmed
    later = recorded["label_present_before_request"]["mtime_ns"] + 1_000_000_000
    os.utime(stale, ns=(later, later))
    assert oracle.ask(request) == Answer.delivered(stale)


# ------------------------------------------------------------------ 7. declared sizes
def huge_header(path: Path, like: Path, shape: tuple[int, ...] = (1200, 1200, 1200)) -> None:
    """A few-KB ``.nii.gz`` whose header claims ``shape`` int16 voxels."""
    hdr = nib.load(like).header.copy()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\x00" * 4 + np.zeros(4096, np.int16).tobytes()
    path.write_bytes(gzip.compress(raw))


def test_header_claiming_a_huge_image_is_refused_before_reading(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = data / CASE / f"{CASE}_t1.nii.gz"
    huge_header(target, data / CASE / f"{CASE}_flair.nii.gz")
    assert target.stat().st_size < 20_000
    allocated: list[str] = []
    real = nib.arrayproxy.ArrayProxy.__array__

    def spy(proxy: nib.arrayproxy.ArrayProxy, *args: object, **kwargs: object) -> np.ndarray:
        if str(target) in str(proxy.file_like):
            allocated.append(str(target))
        return real(proxy, *args, **kwargs)

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", spy)
    run = tmp_path / "run"
    line = refused(monkeypatch, capsys, fit_args(data, run, "--data.max_voxels", str(2000**3)))
    assert str(target) in line and "(1200, 1200, 1200)" in line and "file holds" in line
    assert allocated == []  # refused from the header alone
    assert snapshot(run) == {}


def test_voxel_limit_is_configurable(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = fit_args(data, tmp_path / "run", "--data.max_voxels", "1000")
    line = refused(monkeypatch, capsys, args)
    assert "4,096 voxels, above the limit of 1,000 (data.max_voxels)" in line


def test_uncompressed_file_shorter_than_its_header_says(data: Path, tmp_path: Path) -> None:
    src = data / CASE / f"{CASE}_t2.nii.gz"
    img = nib.load(src)
    short = data / CASE / f"{CASE}_t2.nii"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), short)
    short.write_bytes(short.read_bytes()[:-100])
    case = Case(CASE, (str(short),), ("t2",))
    with pytest.raises(DataError, match=r"_t2\.nii: header declares .* but the file holds"):
        validate_case(case)


def test_memory_error_never_reaches_the_user_empty(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_memory)
    with pytest.raises(DataError, match=r"_flair\.nii\.gz: not enough memory to read shape"):
        ActiveDataModule(root=str(data), divisible_by=4).setup("fit")
