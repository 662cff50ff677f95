"""Self-training pieces: the schedule, one teacher pass, and the datamodule's pseudo-labelled set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_ada.active.self_training import (
    SelfTraining,
    held_out_dice,
    label_cases,
    select_cases,
)
from lightning_ada.augment.tumour_contrast import TumourContrast
from lightning_ada.data.datamodule import ActiveDataModule
from lightning_ada.data.pseudo_set import PseudoLabel, load_label, pseudo_count, save_label
from lightning_ada.errors import DataError, UnsafePathError


# ---------------------------------------------------------------------------- schedule
def _boundaries(st: SelfTraining, epochs: int) -> list[int]:
    """The boundaries (completed epochs) at which the schedule makes a pass, as a run would."""
    made = []
    for boundary in range(epochs + 1):
        if st.due(boundary, epochs):
            st.last_boundary, st.passes_done = boundary, st.passes_done + 1
            made.append(boundary)
    return made


def test_schedule_warmup_every_passes_and_last_epoch() -> None:
    assert _boundaries(SelfTraining(warmup_epochs=2, every=2, passes=3), 10) == [2, 4, 6]
    # no pass after the last epoch: nothing would train on it
    assert _boundaries(SelfTraining(warmup_epochs=2, every=2, passes=None), 10) == [2, 4, 6, 8]
    assert _boundaries(SelfTraining(warmup_epochs=0, every=3, passes=None), 7) == [0, 3, 6]
    stopped = SelfTraining()
    stopped.stopped = True
    assert _boundaries(stopped, 10) == []
    st = SelfTraining(warmup_epochs=1, every=1, passes=None)
    st.last_boundary = 1  # a resume right after the pass at boundary 1 does not repeat it
    assert not st.due(1, 5) and st.due(2, 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": 0}, "every"),
        ({"warmup_epochs": -1}, "warmup"),
        ({"passes": 0}, "passes"),
        ({"ratio": 1.0}, "ratio"),
        ({"top_fraction": 0.0}, "top_fraction"),
        ({"tiers": [1.0, 0.5]}, "tiers"),
        ({"selection": "best"}, "selection"),
        ({"connectivity": 4}, "connectivity"),
        ({"regions": [[0, 1]]}, "regions"),
        ({"stop_delta": -0.1}, "stop_delta"),
    ],
)
def test_bad_options_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SelfTraining(**kwargs)


def test_state_round_trip() -> None:
    st = SelfTraining()
    st.passes_done, st.last_boundary, st.held_out = 2, 4, 0.71
    st.history.append({"event": "pass", "pass": 1})
    fresh = SelfTraining()
    fresh.load_state_dict(st.state_dict())
    assert fresh.state_dict() == st.state_dict()
    fresh.load_state_dict({})  # an older checkpoint: a fresh schedule
    assert fresh.passes_done == 0 and fresh.last_boundary is None and not fresh.history


# ---------------------------------------------------------------------------- one pass
def test_select_top_fraction_threshold_and_tiers_by_pass() -> None:
    conf = {f"c{i}": v for i, v in enumerate([0.9, 0.2, 0.7, 0.5, 0.95, 0.1, 0.6, 0.8, 0.3, 0.4])}
    order = sorted(conf, key=lambda c: -conf[c])
    assert select_cases(conf, "top_fraction", 0, 0.3, None, [1.0]) == order[:3]
    assert select_cases(conf, "top_fraction", 5, 0.3, None, [1.0]) == order[:3]  # pass-free
    assert select_cases(conf, "top_fraction", 0, None, 0.55, [1.0]) == order[:5]
    tiers = [0.5, 0.8, 1.0]
    assert select_cases(conf, "tiered", 0, None, None, tiers) == order[:5]
    assert select_cases(conf, "tiered", 1, None, None, tiers) == order[:8]
    assert select_cases(conf, "tiered", 7, None, None, tiers) == order  # the last tier stays
    assert select_cases(conf, "tiered", 1, None, 0.65, tiers) == order[:4]


def _two_blob_teacher(image: torch.Tensor) -> torch.Tensor:
    """Probabilities ``(3, H, W, D)`` whose foreground is two blobs (27 and 8 voxels) with the
    image's first voxel as the certainty of the blobs."""
    sure = float(image[0, 0, 0, 0])
    probs = torch.zeros(3, *image.shape[1:])
    probs[0] = 0.9
    probs[1] = 0.05
    probs[2] = 0.05
    for box in ((slice(2, 5),) * 3, (slice(10, 12),) * 3):
        probs[(slice(None), *box)] = torch.tensor([0.1, sure, 0.9 - sure]).view(3, 1, 1, 1)
    return probs


def test_label_cases_writes_cleaned_labels_with_confidence(tmp_path: Path) -> None:
    images = {"a": torch.full((2, 16, 16, 16), 0.8), "b": torch.full((2, 16, 16, 16), 0.6)}
    out = label_cases(_two_blob_teacher, images.__getitem__, ["a", "b"], tmp_path / "pass_00")
    assert list(out) == ["a", "b"]
    for cid, sure in (("a", 0.8), ("b", 0.6)):
        rec = out[cid]
        assert rec.path == tmp_path / "pass_00" / f"{cid}.npy" and rec.path.is_file()
        label = load_label(rec.path)
        assert label.shape == (1, 16, 16, 16)
        assert int((label > 0).sum()) == 27 == rec.foreground_voxels  # the small blob is gone
        assert not label[0, 10:12, 10:12, 10:12].any()
        expected = 1 if sure > 0.45 else 2
        assert (label[0, 2:5, 2:5, 2:5] == expected).all()
        assert rec.confidence == pytest.approx(max(sure, 0.9 - sure), rel=1e-5)
    assert out["a"].confidence > out["b"].confidence
    assert not list((tmp_path / "pass_00").glob(".*"))  # no temporary file left
    calls: list[tuple[int, ...]] = []

    def counting(image: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(image.shape))
        return _two_blob_teacher(image)

    label_cases(counting, images.__getitem__, ["a"], tmp_path / "f", flips=True)
    assert len(calls) == 8  # the teacher averaged over the 8 mirror flips
    with pytest.raises(UnsafePathError):
        label_cases(_two_blob_teacher, lambda _: images["a"], ["../evil"], tmp_path / "p")


def test_a_metatensor_teacher_output_is_saved_as_a_plain_tensor(tmp_path: Path) -> None:
    from monai.data import MetaTensor

    def teacher(image: torch.Tensor) -> torch.Tensor:  # sliding-window inference keeps the type
        return MetaTensor(_two_blob_teacher(image), affine=torch.eye(4))

    out = label_cases(teacher, lambda _: MetaTensor(torch.full((1, 16, 16, 16), 0.8)), ["m"], tmp_path)
    raw = np.load(out["m"].path, allow_pickle=False)  # a plain array, no pickled object
    assert raw.dtype == np.uint8 and raw.shape == (1, 16, 16, 16) and int((raw > 0).sum()) == 27
    again = label_cases(teacher, lambda _: MetaTensor(torch.full((1, 16, 16, 16), 0.8)), ["m"], tmp_path / "2")
    assert again["m"].sha256 == out["m"].sha256  # the same label, the same bytes


def test_held_out_dice_is_exact_on_constructed_cases() -> None:
    label = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    label[0, 2:6, 2:6, 2:6] = 1

    def perfect(image: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(label[0], 2).permute(3, 0, 1, 2).float()

    def half(image: torch.Tensor) -> torch.Tensor:
        pred = label[0].clone()
        pred[2:4] = 0  # predicts half the tumour: Dice = 2 * 32 / (32 + 64)
        return torch.nn.functional.one_hot(pred, 2).permute(3, 0, 1, 2).float()

    cases = [(torch.zeros(1, 8, 8, 8), label)] * 2
    assert held_out_dice(perfect, cases, {"tumour": [1]}) == pytest.approx(1.0)
    assert held_out_dice(half, cases, {"tumour": [1]}) == pytest.approx(2 / 3)
    assert held_out_dice(half, [], {"tumour": [1]}) is None


# ---------------------------------------------------------------------------- the datamodule
def make_dm(root: Path, **kw: object) -> ActiveDataModule:
    kw = {"batch_size": 2, "iterations_per_epoch": 10, "augment": False} | kw
    dm = ActiveDataModule(
        root=str(root), patch_size=[16, 16, 16], divisible_by=4, **kw,  # type: ignore[arg-type]
    )
    dm.setup("fit")
    return dm


def _pseudo(dm: ActiveDataModule, folder: Path, ids: list[str]) -> dict[str, torch.Tensor]:
    """Give ``ids`` a constructed pseudo-label each (a cube of class 1 whose size tells the case
    apart), as a teacher pass would; return them."""
    labels, records = {}, []
    for k, cid in enumerate(ids):
        label = torch.zeros(1, 16, 16, 16, dtype=torch.long)
        label[0, 4 : 6 + k, 4:8, 4:8] = 1
        path = folder / f"{cid}.npy"
        records.append(PseudoLabel(cid, str(path), 0, 2, 20, 0.9 - 0.1 * k, save_label(label, path)))
        labels[cid] = label
    dm.set_pseudo_labels(records, ratio=0.25)
    return labels


def _epoch(dm: ActiveDataModule) -> list[dict]:
    """Every item of one training epoch (batches split back into items)."""
    items = []
    for batch in dm.train_dataloader():
        for i, cid in enumerate(batch["case_id"]):
            items.append(
                {"case_id": cid, "image": _plain(batch["image"][i]), "label": _plain(batch["label"][i])}
            )
    return items


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def test_epoch_mixes_pseudo_labelled_and_labelled_cases_at_the_ratio(
    phantom_root: Path, tmp_path: Path
) -> None:
    dm = make_dm(phantom_root)
    pool = dm.unlabeled_ids()
    labelled = pool[0]
    dm.label(labelled, dm.case(labelled).label, None, round=0, epoch=-1)
    assert Counter(i["case_id"] for i in _epoch(dm)) == {labelled: 20}  # no pseudo-labels yet
    pseudo = _pseudo(dm, tmp_path, pool[1:4])
    items = _epoch(dm)
    counts = Counter(i["case_id"] for i in items)
    assert len(items) == 20 and counts[labelled] == 15  # round(0.25 * 20) = 5 pseudo items
    assert sum(counts[c] for c in pseudo) == 5 and sorted(counts[c] for c in pseudo) == [1, 2, 2]
    for item in items:  # the whole volume is the patch: labels arrive as given
        if item["case_id"] in pseudo:
            assert torch.equal(item["label"], pseudo[item["case_id"]])
            assert torch.equal(item["image"], dm.item(item["case_id"])["image"].as_tensor())
        else:
            assert torch.equal(item["label"], dm.item(labelled)["label"].as_tensor())
    # a case labelled after the pass leaves the pseudo-labelled set
    dm.label(pool[1], dm.case(pool[1]).label, None, round=1, epoch=2)
    assert dm.pseudo_labelled_ids() == pool[2:4]
    counts = Counter(i["case_id"] for i in _epoch(dm))
    assert counts[pool[2]] + counts[pool[3]] == 5 and counts[labelled] + counts[pool[1]] == 15
    assert pseudo_count(20, 0.25, 0, 3) == 20 and pseudo_count(20, 0.25, 2, 0) == 0


def test_tumour_contrast_alters_labelled_cases_and_pseudo_labelled_only_when_asked(
    phantom_root: Path, tmp_path: Path
) -> None:
    for on_pseudo in (False, True):
        contrast = TumourContrast(blend=False, prob=1.0, factors=[2.0], on_pseudo_labels=on_pseudo)
        dm = make_dm(phantom_root, tumour_contrast=contrast)
        pool = dm.unlabeled_ids()
        dm.label(pool[0], dm.case(pool[0]).label, None, round=0, epoch=-1)
        pseudo = _pseudo(dm, tmp_path / str(on_pseudo), pool[1:3])
        seen = set()
        for item in _epoch(dm):
            cid = item["case_id"]
            cached = dm.item(cid)["image"].as_tensor()
            tumour = (pseudo[cid] if cid in pseudo else dm.item(cid)["label"].as_tensor()) > 0
            changed = item["image"] != cached
            assert not changed[:, ~tumour[0]].any()  # nothing outside the tumour moves
            altered = cid not in pseudo or on_pseudo
            assert bool(changed.any()) is altered, (cid, on_pseudo)
            seen.add(cid in pseudo)
        assert seen == {True, False}
    with pytest.raises(ValueError, match="tumour_contrast"):
        TumourContrast(factors=[0.0])


def test_tumour_contrast_is_seeded_per_epoch(phantom_root: Path) -> None:
    contrast = TumourContrast(prob=0.5, factor_range=(0.5, 2.0), dilation_radius=1, sigma=1.0)
    dm = make_dm(phantom_root, tumour_contrast=contrast)
    cid = dm.unlabeled_ids()[0]
    dm.label(cid, dm.case(cid).label, None, round=0, epoch=-1)
    a, b = _epoch(dm), _epoch(dm)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    cached = dm.item(cid)["image"].as_tensor()
    altered = [not torch.equal(x["image"], cached) for x in a]
    assert any(altered) and not all(altered)  # prob 0.5


def test_pseudo_set_state_round_trip_and_changed_files(phantom_root: Path, tmp_path: Path) -> None:
    dm = make_dm(phantom_root)
    pool = dm.unlabeled_ids()
    dm.label(pool[0], dm.case(pool[0]).label, None, round=0, epoch=-1)
    pseudo = _pseudo(dm, tmp_path, pool[2:5])
    state = dm.state_dict()
    assert [r["case_id"] for r in state["pseudo"]["records"]] == pool[2:5]
    fresh = ActiveDataModule(root=str(phantom_root), divisible_by=4, patch_size=[16, 16, 16])
    fresh.load_state_dict(state)  # before setup, as Lightning does on resume
    fresh.setup("fit")
    assert fresh.pseudo_labelled_ids() == pool[2:5] and fresh.pseudo.ratio == 0.25
    assert all(torch.equal(fresh.pseudo_item(c)["label"].as_tensor(), pseudo[c]) for c in pseudo)
    assert torch.equal(_plain(fresh.pseudo_item(pool[2])["image"]), _plain(dm.item(pool[2])["image"]))
    # an older checkpoint without pseudo-labels
    old = ActiveDataModule(root=str(phantom_root), divisible_by=4)
    old.load_state_dict({"pool": state["pool"]})
    assert len(old.pseudo) == 0
    # a pseudo-label file changed or removed since the pass: refused, naming the file
    path = Path(state["pseudo"]["records"][1]["path"])
    save_label(torch.zeros(1, 16, 16, 16, dtype=torch.long), path)
    with pytest.raises(DataError, match=f"{path.name}.*changed"):
        ActiveDataModule(root=str(phantom_root)).load_state_dict(state)
    path.unlink()
    with pytest.raises(DataError, match=f"{path.name}.*gone"):
        ActiveDataModule(root=str(phantom_root)).load_state_dict(state)
    with pytest.raises(DataError, match="outside the target pool"):
        dm.set_pseudo_labels(
            [PseudoLabel(dm.split_ids["test"][0], str(path), 0, 0, 0, 1.0, "x")], 0.5
        )
