"""The MONAI Label app, driven through a real server by MONAI Label's own client.

One server (``python -m lightning_ada.monailabel``) over a datastore of the tiny phantom's 6 pool
cases, on 127.0.0.1: info, next sample by lightning_ada strategies, labels saved (good and bad),
training, inference, next sample again, and the requests a server must refuse.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel", reason="the MONAI Label extra: pip install -e .[label]")

from monailabel.client import MONAILabelClient  # noqa: E402
from monailabel.client.client import MONAILabelClientException  # noqa: E402

from lightning_ada.main import main  # noqa: E402
from lightning_ada.monailabel.launch import ServerProcess  # noqa: E402
from lightning_ada.monailabel.prepare import prepare  # noqa: E402

# one server for the module: its tests go to one xdist worker (--dist loadgroup). All are `slow`
# (a server and lightning-ada child processes: the default suite's 5 minutes); make test, the
# README's test command, runs them after the default suite.
pytestmark = [pytest.mark.xdist_group("monailabel_server"), pytest.mark.slow]

CONF = Path(__file__).parent / "conf"
POOL = {f"glioma_pool_{i:03d}" for i in range(6)}


def server_process(studies: Path, source: Path, log: Path, strategies: tuple[str, ...] = ("random", "mmacts"),
                   *options: str) -> ServerProcess:
    return ServerProcess(studies, source, [CONF / "random_tiny.yaml"], log, strategies, options)


def status_of(error: MONAILabelClientException) -> int | None:
    """The HTTP status of a refused request (the client keeps it in its message for uploads)."""
    if error.status_code is not None:
        return int(error.status_code)
    head = str(error.msg).split(";")[0]
    return int(head.split(":")[1]) if head.startswith("Status:") else None


def wait_for_training(client: MONAILabelClient, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.train_status()
        if status["status"] not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(0.5)
    raise AssertionError("training did not finish")


@pytest.fixture(scope="module")
def studies(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MONAI Label datastore: the phantom's 6 pool cases as 4-D NIfTIs, no label yet."""
    out = tmp_path_factory.mktemp("studies")
    assert len(prepare(str(phantom_root), "datalist", out, None, [1, 2, 4], "pool", False)) == 6
    return out


@pytest.fixture(scope="module")
def server(studies: Path, source_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, MONAILabelClient]]:
    srv = server_process(studies, source_ckpt, tmp_path_factory.mktemp("log") / "server.log")
    client = srv.start()
    yield srv, client
    srv.kill()


def reference(phantom_root: Path, case_id: str) -> Path:
    return phantom_root / case_id / f"{case_id}_seg.nii.gz"


def query_ranking(studies: Path, checkpoint: Path, strategy: str, out: Path) -> list[dict]:
    """``lightning-ada query`` of the datastore's images (4-D, unlabelled), run here in-process
    with a datalist written by hand: what the server's ranking must equal."""
    cases = [{"case_id": p.name[: -len(".nii.gz")], "images": [str(p)],
              "modalities": ["flair", "t1", "t1ce", "t2"], "split": "pool"}
             for p in sorted(studies.glob("*.nii.gz"))]
    datalist = out / "datalist.json"
    datalist.write_text(json.dumps({"modalities": ["flair", "t1", "t1ce", "t2"],
                                    "labels": {"NCR": 1, "ED": 2, "ET": 4}, "cases": cases}))
    main(["query", "-c", str(CONF / "random_tiny.yaml"), "--data.root", str(datalist),
          "--data.phantom", "null", "--data.splits", "{test: []}", "--ckpt_path", str(checkpoint),
          "--trainer.default_root_dir", str(out / "run"), "--active.strategy", strategy,
          "--out", str(out / "ranking")])
    return json.loads((out / "ranking.json").read_text())


def test_next_sample_is_the_strategys_ranking_made_once(server, studies: Path) -> None:
    _, client = server
    info = client.info()
    assert {"random", "mmacts"} <= set(info["strategies"])
    assert info["labels"] == {"NCR": 1, "ED": 2, "ET": 4}
    source_version = info["lightning_ada"]["model_version"]

    first = client.next_sample("mmacts", {})
    assert first["id"] in POOL and first["strategy"] == "mmacts"
    assert first["elected_modality"] in ("flair", "t1", "t1ce", "t2")
    assert ["flair", "t1", "t1ce", "t2"][first["elected_channel"]] == first["elected_modality"]
    assert set(first["election_dice"]) == {"flair", "t1", "t1ce", "t2"}
    assert first["factors"]["product"] == pytest.approx(first["score"])
    assert first["model_version"] == source_version
    # the ranking is in the datastore's image info, and is made once per model version
    ranking = studies / ".lightning_ada" / "rankings" / f"mmacts_{source_version}.json"
    made = ranking.stat().st_mtime_ns
    assert client.next_sample("mmacts", {})["id"] == first["id"]
    assert ranking.stat().st_mtime_ns == made
    stored = json.loads((studies / "datastore_v2.json").read_text())["objects"][first["id"]]
    assert stored["image"]["info"]["lightning_ada"]["mmacts"]["score"] == pytest.approx(first["score"])


def test_same_ranking_as_query_then_label_train_infer_and_next_sample_again(
    server, studies: Path, phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    _, client = server
    source_version = client.info()["lightning_ada"]["model_version"]
    first = client.next_sample("mmacts", {})
    # the server's round is lightning-ada query's ranking on the same checkpoint and pool
    expected = query_ranking(studies, source_ckpt, "mmacts", tmp_path)
    ranking = studies / ".lightning_ada" / "rankings" / f"mmacts_{source_version}.json"
    served = json.loads(ranking.read_text())
    assert [r["case_id"] for r in served] == [r["case_id"] for r in expected]
    assert [r["score"] for r in served] == pytest.approx([r["score"] for r in expected])
    assert [r["elected_modality"] for r in served] == [r["elected_modality"] for r in expected]
    assert first["id"] == expected[0]["case_id"]

    client.save_label(first["id"], str(reference(phantom_root, first["id"])), tag="final")
    assert (studies / "labels" / "final" / f"{first['id']}.nii.gz").is_file()
    client.train_start("lightning_ada", {})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    assert any("is current" in line for line in status["details"])
    trained = client.info()["lightning_ada"]["model_version"]
    assert trained != source_version

    image = studies / "glioma_pool_003.nii.gz"
    path, params = client.infer("lightning_ada", "glioma_pool_003", {})
    assert params["model_version"] == trained
    mask, scan = nib.load(path), nib.load(image)
    assert mask.shape == scan.shape[:3]
    assert np.allclose(mask.affine, scan.affine)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2, 4}

    again = client.next_sample("mmacts", {})
    assert again["id"] != first["id"] and again["id"] in POOL
    assert again["model_version"] == trained


def test_a_bad_label_is_refused_naming_the_fault(server, studies: Path, phantom_root: Path, tmp_path: Path) -> None:
    _, client = server
    good = nib.load(reference(phantom_root, "glioma_pool_004"))
    data = np.asarray(good.dataobj)
    shapes = tmp_path / "shape.nii.gz"
    nib.save(nib.Nifti1Image(data[:-2], good.affine), shapes)
    values = tmp_path / "values.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data > 0, 7, 0).astype(np.uint8), good.affine), values)
    for bad, fault in ((shapes, "shape"), (values, "7")):
        with pytest.raises(MONAILabelClientException) as refused:
            client.save_label("glioma_pool_004", str(bad), tag="final")
        assert status_of(refused.value) == 422
        assert "glioma_pool_004" in refused.value.msg and fault in refused.value.msg
    assert not (studies / "labels" / "final" / "glioma_pool_004.nii.gz").exists()


def test_two_uploads_for_one_image_store_one_whole_label(server, studies: Path, phantom_root: Path, tmp_path: Path) -> None:
    _, client = server
    good = nib.load(reference(phantom_root, "glioma_pool_005"))
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    nib.save(good, a)
    nib.save(nib.Nifti1Image((np.asarray(good.dataobj) > 0).astype(np.uint8) * 2, good.affine), b)
    errors: list[Exception] = []

    def upload(path: Path) -> None:
        try:
            client.save_label("glioma_pool_005", str(path), tag="final")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(p,)) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = np.asarray(nib.load(studies / "labels" / "final" / "glioma_pool_005.nii.gz").dataobj)
    assert any(np.array_equal(stored, np.asarray(nib.load(p).dataobj)) for p in (a, b))


def test_an_image_outside_the_datastore_is_refused(server) -> None:
    _, client = server
    for image in ("../../etc/hostname", "/etc/hostname", "no_such_case"):
        with pytest.raises(MONAILabelClientException) as refused:
            client.infer("lightning_ada", image, {})
        assert status_of(refused.value) == 404
        assert "not an image of the datastore" in refused.value.msg
    with pytest.raises(MONAILabelClientException) as refused:
        client.save_label("../escape", "/etc/hostname", tag="final")
    assert status_of(refused.value) == 404


def test_a_second_training_while_one_runs_is_refused(server, studies: Path, phantom_root: Path) -> None:
    _, client = server
    client.save_label("glioma_pool_002", str(reference(phantom_root, "glioma_pool_002")), tag="final")
    client.train_start("lightning_ada", {})
    deadline = time.monotonic() + 60  # MONAI Label counts a training once its process started
    while client.train_status()["status"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with pytest.raises(MONAILabelClientException) as refused:
        client.train_start("lightning_ada", {})
    assert status_of(refused.value) == 429
    assert wait_for_training(client)["status"] == "DONE"


def test_a_server_killed_during_training_resumes_and_keeps_its_labels(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    studies = tmp_path / "studies"
    prepare(str(phantom_root), "datalist", studies, None, [1, 2, 4], "pool", False)
    srv = server_process(studies, source_ckpt, tmp_path / "server.log", ("random", "mmacts"),
                         "--overrides", "--trainer.max_epochs 30")
    client = srv.start()
    try:
        for cid in ("glioma_pool_000", "glioma_pool_001"):
            client.save_label(cid, str(reference(phantom_root, cid)), tag="final")
        client.train_start("lightning_ada", {})
        runs = studies / ".lightning_ada" / "runs"
        deadline = time.monotonic() + 300
        while not list(runs.glob("train_*/checkpoints/last.ckpt")):
            assert time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.2)
        srv.kill()  # mid-training: the server and its training process die at once
        assert not list(runs.glob("train_*/done.json"))

        client = srv.start()
        assert client.info()["datastore"]["completed"] == 2  # no saved label lost
        client.train_start("lightning_ada", {})
        status = wait_for_training(client)
        assert status["status"] == "DONE", status
        (done,) = runs.glob("train_*/done.json")
        result = json.loads(done.read_text())
        assert result["resumed"] is True
        assert result["labelled"] == ["glioma_pool_000", "glioma_pool_001"]
        assert client.info()["lightning_ada"]["model_version"] == result["model_version"]
    finally:
        srv.kill()


def test_a_region_rule_asks_for_slices_and_its_deliveries_merge_into_a_partial_label(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    """``/activelearning/entropy_region`` with the unit ``slices:k=2``: the answer names two
    slices of the image file; a label is read as their delineation (tumour elsewhere refused),
    deliveries merge (255: not annotated), training takes the partial label, and later answers
    never ask for an annotated voxel again."""
    from lightning_ada.cases import NOT_ANNOTATED

    studies = tmp_path / "studies"
    prepare(str(phantom_root), "datalist", studies, None, [1, 2, 4], "pool", False)
    srv = server_process(studies, source_ckpt, tmp_path / "server.log", ("entropy_region",), "--unit", "slices:k=2")
    client = srv.start()
    try:
        assert "entropy_region" in client.info()["strategies"]
        first = client.next_sample("entropy_region", {})
        cid = first["id"]
        assert cid in POOL and len(first["slices"]) == 2 and first["slice_axis"] in (0, 1, 2)
        asked = np.asarray(nib.load(first["asked_mask"]).dataobj) > 0
        reference_label = nib.load(reference(phantom_root, cid))
        truth = np.asarray(reference_label.dataobj).astype(np.uint8)
        assert np.flatnonzero(asked.any(axis=tuple(a for a in range(3) if a != first["slice_axis"]))).tolist() == first["slices"]

        # the whole reference marks tumour outside the two slices: refused, naming it
        assert bool((truth[~asked] > 0).any())
        with pytest.raises(MONAILabelClientException) as refused:
            client.save_label(cid, str(reference(phantom_root, cid)), tag="final")
        assert status_of(refused.value) == 422 and "outside the asked region" in refused.value.msg
        assert not (studies / "labels" / "final" / f"{cid}.nii.gz").exists()

        # the two slices delineated (0 elsewhere, as an editor saves it): stored as a partial label
        delivery = tmp_path / "slices.nii.gz"
        nib.save(nib.Nifti1Image(np.where(asked, truth, 0).astype(np.uint8), reference_label.affine), delivery)
        client.save_label(cid, str(delivery), tag="final")
        stored = np.asarray(nib.load(studies / "labels" / "final" / f"{cid}.nii.gz").dataobj)
        assert np.array_equal(stored[asked], truth[asked])
        assert bool((stored[~asked] == NOT_ANNOTATED).all())

        # the next answer asks for other voxels; half of them delivered, the rest left at 255
        second = client.next_sample("entropy_region", {})
        other = np.asarray(nib.load(second["asked_mask"]).dataobj) > 0
        if second["id"] == cid:
            assert not bool((other & asked).any())
        second_truth = np.asarray(nib.load(reference(phantom_root, second["id"])).dataobj).astype(np.uint8)
        half = other.copy()
        half[: half.shape[0] // 2] = False
        partial = np.where(half, second_truth, np.where(other, NOT_ANNOTATED, 0)).astype(np.uint8)
        delivery2 = tmp_path / "partial.nii.gz"
        nib.save(nib.Nifti1Image(partial, reference_label.affine), delivery2)
        client.save_label(second["id"], str(delivery2), tag="final")
        merged = np.asarray(nib.load(studies / "labels" / "final" / f"{second['id']}.nii.gz").dataobj)
        assert np.array_equal(merged[half], second_truth[half])
        assert bool((merged[other & ~half] == NOT_ANNOTATED).all())
        if second["id"] == cid:  # the first delivery is kept
            assert np.array_equal(merged[asked], truth[asked])
        answered = json.loads((studies / ".lightning_ada" / "deliveries" / f"{second['id']}.json").read_text())
        assert answered[-1]["annotated_voxels"] == int(half.sum())

        client.train_start("lightning_ada", {})
        status = wait_for_training(client)
        assert status["status"] == "DONE", status
        (config,) = (studies / ".lightning_ada" / "runs").glob("train_*/**/config.yaml")
        assert "initial_partial" in config.read_text() and cid in config.read_text()

        after = client.next_sample("entropy_region", {})
        assert after["model_version"] == client.info()["lightning_ada"]["model_version"]
        final = studies / "labels" / "final" / f"{after['id']}.nii.gz"
        if final.exists():  # a case annotated in part: only its unannotated voxels are asked for
            done = np.asarray(nib.load(final).dataobj) != NOT_ANNOTATED
            assert not bool(((np.asarray(nib.load(after["asked_mask"]).dataobj) > 0) & done).any())
    finally:
        srv.kill()
