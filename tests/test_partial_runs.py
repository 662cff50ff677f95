"""Sub-volume units through the CLI: the query asks for the region, the simulated and the file
oracle deliver it, training sees only what was annotated, and a kill between two partial
deliveries resumes to the same labelled voxels and query log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from lightning_ada.cases import NOT_ANNOTATED
from lightning_ada.errors import AnnotationPending
from lightning_ada.main import main

CONF = Path(__file__).parent / "conf"


def fit_args(root: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(CONF / "random_tiny.yaml"),
        "--data.root", str(root), "--model.source_checkpoint", str(ckpt),
        "--trainer.default_root_dir", str(out), "--trainer.max_epochs", "2",
        "--trainer.limit_val_batches", "0", "--active.strategy", "random_region",
        "--active.budget", "1", *extra,
    ]


def queries(out: Path) -> list[dict[str, Any]]:
    return [q for q in json.loads((out / "query_log.json").read_text()) if "case_id" in q]


def deliveries(ckpt: Path) -> dict[str, list[dict[str, Any]]]:
    """Every delivery per case, from the datamodule state of a checkpoint."""
    pool = torch.load(ckpt, weights_only=False)["ActiveDataModule"]["pool"]
    out = {cid: [a] for cid, a in pool["labeled"].items()}
    for cid, more in pool.get("more", {}).items():
        out[cid] += more
    return out


@pytest.mark.parametrize(
    ("unit", "region", "per_query"),
    [(["--active.unit", "slices", "--active.unit.k", "4"], "slices", 4 * 16 * 16),
     (["--active.unit", "patch", "--active.unit.size", "8"], "patch", 8**3)],
    ids=["slices", "patch"],
)
def test_the_simulated_oracle_delivers_the_asked_region_only(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, unit: list[str], region: str,
    per_query: int,
) -> None:
    out = tmp_path / "run"
    main(fit_args(phantom_root, source_ckpt, out, *unit))
    log = queries(out)
    assert len(log) == 16**3 // per_query  # one whole-scan equivalent, spent at once
    assert all(q["region"]["kind"] == region for q in log)
    assert all(q["cost"]["voxels"] == per_query for q in log)
    assert sum(q["cost"]["scans"] for q in log) == pytest.approx(1.0)
    stored = deliveries(out / "checkpoints" / "last.ckpt")
    assert sum(len(v) for v in stored.values()) == len(log)
    assert all(a["partial"] and a["region"]["kind"] == region for v in stored.values() for a in v)
    # what training sees of a case: the reference inside its regions, NOT_ANNOTATED elsewhere
    cli = main(fit_args(phantom_root, source_ckpt, tmp_path / "again", *unit)[1:], run=False)
    dm = cli.datamodule
    dm.setup("fit")
    dm.load_state_dict(torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["ActiveDataModule"])
    from lightning_ada.data.regions import Region

    for cid, parts in stored.items():
        item = dm.training_item(cid)
        mask = torch.zeros(16, 16, 16, dtype=torch.bool)
        for a in parts:
            mask |= Region.from_json(a["region"]).mask((16, 16, 16))
        reference = dm.item(cid)["label"][0]
        assert torch.equal(item["label"][0][mask], reference[mask])
        assert bool((item["label"][0][~mask] == NOT_ANNOTATED).all())


def partial_label(case_dir: Path, case_id: str, asked_mask: Path, target: Path,
                  leave_out: int = 0) -> None:
    """The reference inside the asked region, NOT_ANNOTATED elsewhere (``leave_out`` more voxels
    of the region left unannotated: a partial delivery)."""
    seg = nib.load(case_dir / case_id / f"{case_id}_seg.nii.gz")
    asked = np.asanyarray(nib.load(asked_mask).dataobj) > 0
    data = np.where(asked, np.asanyarray(seg.dataobj), NOT_ANNOTATED).astype(np.uint8)
    if leave_out:
        data[tuple(np.argwhere(asked)[:leave_out].T)] = NOT_ANNOTATED
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, seg.affine), target)


@pytest.mark.slow
def test_the_file_oracle_asks_for_slices_refuses_labels_outside_and_counts_what_was_given(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = fit_args(phantom_root, source_ckpt, out, "--active.unit", "slices",
                    "--active.unit.k", "8", "--active.oracle", "files",
                    "--active.oracle.wait", "false", "--active.elect_modality", "true")
    with pytest.raises(AnnotationPending) as pending:
        main(args)
    [label] = [Path(p) for p in pending.value.awaiting]
    case_id = label.name.split("_round")[0]
    assert label.name == f"{case_id}_round0.nii.gz"
    request = json.loads((out / "requests" / f"round_0_{case_id}.json").read_text())
    region = request["region"]
    assert region["network_grid"]["kind"] == "slices" and len(region["network_grid"]["indices"]) == 8
    grid = region["image_grid"]
    assert grid["voxels"] == 8 * 16 * 16 and len(grid["slices"]) == 8
    assert len(grid["slice_centres_mm"]) == 8 and request["deliver_label_to"] == str(label)
    assert Path(request["preview"]).stat().st_size > 1000
    asked = Path(request["asked_region_mask"])
    assert int((np.asanyarray(nib.load(asked).dataobj) > 0).sum()) == 8 * 16 * 16

    # the whole reference mask (tumour outside the asked slices): refused, the request stays open
    reference = phantom_root / case_id / f"{case_id}_seg.nii.gz"
    seg = np.asanyarray(nib.load(reference).dataobj)
    outside = (seg > 0) & ~(np.asanyarray(nib.load(asked).dataobj) > 0)
    assert outside.any()
    label.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), nib.load(reference).affine), label)
    ckpt = pending.value.checkpoint
    with pytest.raises(AnnotationPending):
        main([*args, "--ckpt_path", str(ckpt)])

    # the asked slices, 100 of their voxels left NOT_ANNOTATED: accepted, counted as given
    partial_label(phantom_root, case_id, asked, label, leave_out=100)
    os.utime(label)
    with pytest.raises(AnnotationPending) as second:  # the round's next region is pending
        main([*args, "--ckpt_path", str(ckpt)])
    [first] = queries(out)
    assert first["case_id"] == case_id and first["region"] == region["network_grid"]
    assert first["cost"]["voxels"] == 8 * 16 * 16 - 100
    assert first["cost"]["scans"] == pytest.approx((8 * 16 * 16 - 100) / 16**3)
    assert "_round0" in Path(second.value.awaiting[0]).name


DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from lightning_ada.data.datamodule import ActiveDataModule
    from lightning_ada.main import cli_main

    if os.environ.get("KILL_AFTER"):
        orig_label = ActiveDataModule.label
        done = []
        def label(self, *a, **k):
            added = orig_label(self, *a, **k)
            done.append(1)
            if len(done) == int(os.environ["KILL_AFTER"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return added
        ActiveDataModule.label = label
    cli_main()
    """
)


def run(driver: Path, args: list[str], kill_after: int = 0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KILL_AFTER=str(kill_after) if kill_after else "", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(driver), *args], capture_output=True, text=True,
                          env=env, timeout=600)


def answer_all(phantom_root: Path, out: Path) -> None:
    """Deliver every open request of the run (the asked slices of the reference)."""
    for request in sorted((out / "requests").glob("round_*.json")):
        r = json.loads(request.read_text())
        target = Path(r["deliver_label_to"])
        if not target.exists():
            partial_label(phantom_root, r["case_id"], Path(r["asked_region_mask"]), target)


@pytest.mark.slow  # a kill-and-resume point, like the others in tests/test_resume*.py
def test_a_kill_between_two_partial_deliveries_resumes_to_the_same_voxels_and_log(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    """Two regions asked in one round; the run is killed (SIGKILL, in a subprocess) while it
    records the second delivery. Every other step runs in this process (the same CLI)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    results = {}
    for name, kill in (("uninterrupted", False), ("killed", True)):
        out = tmp_path / name
        args = fit_args(phantom_root, source_ckpt, out, "--active.unit", "slices",
                        "--active.unit.k", "8", "--active.oracle", "files",
                        "--active.oracle.wait", "false")
        with pytest.raises(AnnotationPending):  # 2 regions asked, the first pending
            main(args)
        ckpt = out / "checkpoints" / "pending.ckpt"
        attempt = 0
        while True:  # the annotator answers what is open; the run goes on until it is done
            answer_all(phantom_root, out)
            attempt += 1
            if kill and attempt == 2:  # while the second delivery is being recorded
                done = run(driver, [*args, "--ckpt_path", str(ckpt)], kill_after=1)
                assert done.returncode == -9, done.stderr[-2000:]
                assert len(queries(out)) == 1  # the first delivery recorded before, not the second
                continue
            try:
                main([*args, "--ckpt_path", str(ckpt)])
                break
            except AnnotationPending:
                continue
        log = queries(out)
        results[name] = (
            [(q["case_id"], q["region"], q["cost"]) for q in log],
            {c: [(a["label_path"].replace(str(out), ""), a["region"], a["label_sha256"]) for a in v]
             for c, v in deliveries(out / "checkpoints" / "last.ckpt").items()},
        )
        assert len(log) == 2
    assert results["killed"] == results["uninterrupted"]
