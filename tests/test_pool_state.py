"""PoolState on its own: labels with fingerprints, pseudo-labels, one state dict, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_ada.cases import Case
from lightning_ada.data.pool_state import PoolState
from lightning_ada.data.pseudo_set import PseudoLabel, save_label
from lightning_ada.errors import DataError

IDS = [f"case_{i:02d}" for i in range(6)]


@pytest.fixture()
def cases(tmp_path: Path) -> dict[str, Case]:
    """Six cases whose 'files' are small byte files (the state only fingerprints them)."""
    out = {}
    for cid in IDS:
        image = tmp_path / f"{cid}_t1.bin"
        label = tmp_path / f"{cid}_seg.bin"
        image.write_bytes(cid.encode() * 10)
        label.write_bytes(b"ref-" + cid.encode())
        out[cid] = Case(cid, (str(image),), ("t1",), label=str(label))
    return out


def started(cases: dict[str, Case], initial: tuple[str, ...] = ()) -> PoolState:
    state = PoolState("the test set")
    state.start(IDS, {c: cases[c].label for c in initial}, cases)
    return state


def test_labels_move_cases_and_record_round_modality_and_fingerprints(
    cases: dict[str, Case], tmp_path: Path
) -> None:
    state = started(cases, initial=("case_05",))
    delivered = tmp_path / "delivered.bin"
    delivered.write_bytes(b"mask")
    state.label(cases["case_02"], str(delivered), "flair", round=0, epoch=-1)
    state.label(cases["case_00"], cases["case_00"].label, None, round=1, epoch=3)
    assert state.labeled == ["case_05", "case_02", "case_00"]
    assert state.unlabeled == ["case_01", "case_03", "case_04"]
    a = state.pool.annotation("case_02")
    assert (a.round, a.epoch, a.modality, a.label_path) == (0, -1, "flair", str(delivered))
    assert a.label_sha256 is not None and a.images_sha256 is not None
    assert state.pool.annotation("case_05").label_sha256 is None  # a reference at set-up


def test_the_state_round_trips_before_and_after_start(cases: dict[str, Case], tmp_path: Path) -> None:
    state = started(cases)
    state.label(cases["case_03"], cases["case_03"].label, "t1", round=0, epoch=-1)
    pseudo_file = tmp_path / "p.npy"
    sha = save_label(torch.zeros(1, 2, 2, 2, dtype=torch.uint8), pseudo_file)
    state.set_pseudo_labels([PseudoLabel("case_04", str(pseudo_file), 0, 1, 5, 0.9, sha)], 0.25)
    saved = state.state_dict()

    before = PoolState()
    before.load_state_dict(saved)  # a datamodule restored before setup
    assert before.state_dict()["pool"] == saved["pool"]  # kept until start, not lost
    before.start(IDS, {}, cases)
    after = started(cases)
    after.load_state_dict(saved, cases)
    for restored in (before, after):
        assert restored.labeled == ["case_03"]
        assert restored.pool.annotation("case_03") == state.pool.annotation("case_03")
        assert restored.pseudo_labelled_ids() == ["case_04"] and restored.pseudo.ratio == 0.25
        assert restored.state_dict() == saved


def test_a_pseudo_label_is_dropped_from_training_once_the_case_is_labelled(
    cases: dict[str, Case], tmp_path: Path
) -> None:
    state = started(cases)
    files = []
    for cid in ("case_01", "case_02"):
        path = tmp_path / f"{cid}.npy"
        files.append(PseudoLabel(cid, str(path), 0, 0, 0, 1.0,
                                 save_label(torch.ones(1, 2, 2, 2, dtype=torch.uint8), path)))
    state.set_pseudo_labels(files, 0.5)
    state.label(cases["case_02"], cases["case_02"].label, None, round=0, epoch=1)
    assert state.pseudo_labelled_ids() == ["case_01"]
    with pytest.raises(DataError, match=r"outside the target pool: \['elsewhere'\]"):
        state.set_pseudo_labels([PseudoLabel("elsewhere", files[0].path, 0, 0, 0, 1.0, "x")], 0.5)


def test_a_changed_label_or_image_is_refused_on_restore(cases: dict[str, Case], tmp_path: Path) -> None:
    delivered = tmp_path / "delivered.bin"
    delivered.write_bytes(b"mask")
    state = started(cases)
    state.label(cases["case_01"], str(delivered), None, round=0, epoch=-1)
    saved = state.state_dict()

    delivered.write_bytes(b"another mask")
    with pytest.raises(DataError, match=rf"{delivered}: content changed since case case_01 was labeled"):
        started(cases).load_state_dict(saved, cases)
    delivered.write_bytes(b"mask")
    Path(cases["case_01"].images[0]).write_bytes(b"other scan")
    with pytest.raises(DataError, match="case case_01: images differ"):
        started(cases).load_state_dict(saved, cases)


def test_a_state_of_another_pool_is_refused_naming_the_dataset(cases: dict[str, Case]) -> None:
    other = PoolState()
    other.start([*IDS, "case_99"], {"case_99": cases["case_00"].label}, cases)
    with pytest.raises(DataError, match=r"the test set: the saved pool state does not fit: .*case_99"):
        started(cases).load_state_dict(other.state_dict(), cases)


def test_labelling_before_start_says_what_to_do(cases: dict[str, Case]) -> None:
    with pytest.raises(RuntimeError, match="setup"):
        PoolState().label(cases["case_00"], cases["case_00"].label, None, round=0, epoch=0)
    assert PoolState().unlabeled == []
