"""A new oracle is one file: a review queue written here runs through ``fit`` with pending,
delivered and refused answers, stopping and resuming like the file oracle, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_ada.active.oracles import Answer, Oracle, Request
from lightning_ada.data.pool_view import PoolView
from lightning_ada.errors import AnnotationPending
from lightning_ada.main import main

CONF = Path(__file__).parent / "conf"


class QueueOracle(Oracle):
    """A review queue in one JSON file of the run folder (what a web annotation tool might keep).

    ``ask`` adds a request to the queue as ``pending`` and answers from the queue: a reviewer
    sets an item's ``status`` to ``delivered`` (with ``label``) or ``refused`` (with ``reason``).
    """

    def configure(self, run_dir: Path, pool: PoolView) -> None:
        self.path = Path(run_dir) / "queue.json"

    def ask(self, request: Request) -> Answer:
        queue = json.loads(self.path.read_text()) if self.path.exists() else {}
        key = f"round {request.round}: {request.case.case_id}"
        item = queue.setdefault(key, {"case_id": request.case.case_id, "status": "pending",
                                      "modality": request.modality})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(queue, indent=1))
        if item["status"] == "delivered":
            return Answer.delivered(item["label"], reviewer=item.get("reviewer"))
        if item["status"] == "refused":
            return Answer.refused(item["reason"])
        return Answer("pending", awaiting=f"{key} in {self.path}")

    def where(self) -> str:
        return f"the review queue {self.path}"


def review(queue: Path, **decision: str) -> str:
    """Decide the one pending item of the queue; returns its case id."""
    items = json.loads(queue.read_text())
    [key] = [k for k, v in items.items() if v["status"] == "pending"]
    items[key] |= decision
    queue.write_text(json.dumps(items))
    return items[key]["case_id"]


def fit(root: Path, ckpt: Path, out: Path, *extra: str) -> None:
    main([
        "fit", "-c", str(CONF / "random_tiny.yaml"),
        "--data.root", str(root), "--model.source_checkpoint", str(ckpt),
        "--trainer.default_root_dir", str(out),
        "--trainer.max_epochs", "3", "--trainer.limit_val_batches", "0",
        "--active.budget", "3", "--active.stride", "1",
        "--active.oracle", f"{__name__}.QueueOracle", *extra,
    ])


@pytest.mark.slow
def test_an_oracle_written_in_one_file_pends_delivers_refuses_and_resumes(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    queue = out / "queue.json"
    with pytest.raises(AnnotationPending) as first:
        fit(phantom_root, source_ckpt, out)  # round 0, before training: pending
    assert f"in {queue}" in first.value.awaiting[0] and "review queue" in str(first.value)
    assert not (out / "query_log.json").exists() or json.loads((out / "query_log.json").read_text()) == []
    pending = first.value.checkpoint

    refused = review(queue, status="refused", reason="no tumour visible")
    with pytest.raises(AnnotationPending) as second:  # the refusal is replaced at once: pending
        fit(phantom_root, source_ckpt, out, "--ckpt_path", str(pending))
    assert refused not in second.value.awaiting[0]

    delivered = []
    for _ in range(2):  # the replacement, then the query after epoch 0
        case_id = review(queue, status="delivered", reviewer="dr. a")
        items = json.loads(queue.read_text())
        key = next(k for k, v in items.items() if v["case_id"] == case_id)
        items[key]["label"] = str(phantom_root / case_id / f"{case_id}_seg.nii.gz")
        queue.write_text(json.dumps(items))
        delivered.append(case_id)
        try:
            fit(phantom_root, source_ckpt, out, "--ckpt_path", str(pending))
        except AnnotationPending as again:
            pending = again.checkpoint
    log = json.loads((out / "query_log.json").read_text())
    queries = [q for q in log if "case_id" in q]
    assert [q["case_id"] for q in queries] == [refused, *delivered]
    assert queries[0]["refused"] and queries[0]["refused_reason"] == "no tumour visible"
    assert [q["label_path"] for q in queries[1:]] == [
        str(phantom_root / c / f"{c}_seg.nii.gz") for c in delivered
    ]
    assert [q["epoch"] for q in queries] == [-1, -1, 0] and [q["n_labeled"] for q in queries] == [0, 1, 2]
    assert (out / "checkpoints" / "last.ckpt").is_file()
