"""Open-set pools in the active loop: the oracle refuses flagged cases, the log records purity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lightning_ada.errors import AnnotationPending
from lightning_ada.main import main

CONF = Path(__file__).parent / "conf"


def _flag_pool(src: Path, dst: Path, n_ood: int) -> list[str]:
    """Copy the phantom and flag its first ``n_ood`` pool cases as out of distribution."""
    shutil.copytree(src, dst)
    path = dst / "dataset.json"
    d = json.loads(path.read_text())
    pool = [c for c in d["cases"] if c["split"] == "pool"]
    for c in pool[:n_ood]:
        c["meta"]["ood"] = "no_tumour"
    path.write_text(json.dumps(d))
    return [c["case_id"] for c in pool[:n_ood]]


def _args(root: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "-c",
        str(CONF / "random_tiny.yaml"),
        "--data.root",
        str(root),
        "--model.source_checkpoint",
        str(ckpt),
        "--trainer.default_root_dir",
        str(out),
        "--trainer.limit_val_batches",
        "0",
        *extra,
    ]


def test_simulated_oracle_refuses_flagged_cases_and_the_log_has_purity(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    root = tmp_path / "open"
    ood = set(_flag_pool(phantom_root, root, n_ood=3))
    out = tmp_path / "run"
    main(
        _args(
            root,
            source_ckpt,
            out,
            "--active.budget",
            "4",
            "--trainer.max_epochs",
            "4",
            "--active.open_set_filter",
            "PrototypeFilter",
            "--active.open_set_filter.id_ratio",
            "0.5",
        )
    )
    log = json.loads((out / "query_log.json").read_text())
    ids = [e["case_id"] for e in log]
    assert len(ids) == 4 == len(set(ids))  # a refused case is never queried again
    assert any(e.get("refused") for e in log) and not all(e.get("refused") for e in log)
    labeled = 0
    for k, e in enumerate(log):
        assert (
            e["refused"] is (e["case_id"] in ood)
            if "refused" in e
            else e["case_id"] not in ood
        )
        assert e["ood"] == ("no_tumour" if e["case_id"] in ood else None)
        labeled += e["case_id"] not in ood
        assert e["n_labeled"] == labeled  # a refusal costs the query, adds no label
        assert e["purity"] == pytest.approx(
            sum(x["case_id"] not in ood for x in log[: k + 1]) / (k + 1)
        )
        assert (
            "prototype_distance" in e["factors"] and e["candidates"] <= e["pool_size"]
        )


@pytest.mark.slow
def test_the_annotator_refuses_a_case_with_an_ood_file(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    files = [
        "--active.oracle",
        "files",
        "--active.oracle.wait",
        "false",
        "--active.budget",
        "2",
    ]
    with pytest.raises(AnnotationPending) as pending:
        main(_args(phantom_root, source_ckpt, out, *files))
    [label] = [Path(p) for p in pending.value.awaiting]
    case_id = label.name.removesuffix(".nii.gz")
    request = json.loads(
        next((out / "requests").glob(f"round_0_{case_id}.json")).read_text()
    )
    refusal = Path(request["or_refuse_by_creating"])
    refusal.parent.mkdir(parents=True, exist_ok=True)
    refusal.write_text("not a brain scan")
    with pytest.raises(
        AnnotationPending
    ) as second:  # the next query waits for its label
        main(
            _args(
                phantom_root,
                source_ckpt,
                out,
                *files,
                "--ckpt_path",
                str(pending.value.checkpoint),
            )
        )
    log = json.loads((out / "query_log.json").read_text())
    assert [(e["case_id"], e.get("refused"), e["n_labeled"]) for e in log] == [
        (case_id, True, 0)
    ]
    assert Path(second.value.awaiting[0]).name != label.name


def test_every_query_refused_skips_training_and_keeps_the_source_model(
    phantom_root: Path, source_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pool whose every case is out of distribution: each refusal is replaced until the budget
    is spent, then fit ends without an epoch (it used to fail with 'no labeled case to train on')
    and the model is the source model; the query log and stderr say why."""
    import torch

    root = tmp_path / "open"
    n_pool = sum(
        c["split"] == "pool" for c in json.loads((phantom_root / "dataset.json").read_text())["cases"]
    )
    ood = set(_flag_pool(phantom_root, root, n_ood=n_pool))
    out = tmp_path / "run"
    main(_args(root, source_ckpt, out, "--active.budget", "2", "--trainer.max_epochs", "3"))
    log = json.loads((out / "query_log.json").read_text())
    queried = [e for e in log if "case_id" in e]
    assert len(queried) == 2 and all(e["refused"] and e["case_id"] in ood for e in queried)
    note = [e for e in log if e.get("event") == "nothing_to_train"]
    assert note and note[0]["refused"] == [e["case_id"] for e in queried]
    assert "refused every query (2:" in capsys.readouterr().err
    adapted = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    source = torch.load(source_ckpt, map_location="cpu", weights_only=False)
    weights = {k: v for k, v in source["state_dict"].items() if k.startswith("net.")}
    assert weights and all(torch.equal(adapted["state_dict"][k], v) for k, v in weights.items())
    assert adapted["global_step"] == 0
