"""ActiveQueryCallback: the query schedule and its orchestration. It computes no score itself."""

from __future__ import annotations

import dataclasses
import inspect
import time
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_ada.active.oracle import FileOracle, Oracle, SimulatedOracle
from lightning_ada.active.strategies import REGISTRY, QueryContext, Scored, Strategy, build_strategy
from lightning_ada.checkpoint_io import write_errors_named
from lightning_ada.guards import check_schedule, epochs_in_run, resume_notes, shortfall_notes
from lightning_ada.io import write_json_atomic


class AnnotationPending(Exception):
    """A queried case waits for its annotation; the run was checkpointed and stopped.

    Attributes:
        checkpoint: the checkpoint to resume from once the label files exist.
        labels: the label files the annotator must create.
    """

    def __init__(self, checkpoint: Path, labels: list[Path]) -> None:
        self.checkpoint, self.labels = checkpoint, labels
        files = "\n".join(f"  {p}" for p in labels)
        super().__init__(
            f"annotation needed: create\n{files}\n(see the request files and previews in "
            f"{labels[0].parent.parent / 'requests'}), then continue the run with the same "
            f"command plus\n  --ckpt_path {checkpoint}"
        )


def source_artifacts(module: Any) -> dict[str, Any]:
    """What the module's source checkpoint carries for source-free strategies (read once)."""
    from lightning_ada.models.module import load_source_artifacts

    source_ckpt = getattr(module.hparams, "source_checkpoint", None)
    return load_source_artifacts(source_ckpt) if source_ckpt else {}


def query_context(
    dm: Any,
    module: Any,
    round: int = 0,
    seed: int = 0,
    run_dir: Path | None = None,
    artifacts: dict[str, Any] | None = None,
) -> QueryContext:
    """What a strategy sees of the datamodule and the current model for one query round.

    ``artifacts`` are the source checkpoint's extras (:func:`source_artifacts`); pass them when
    they are already loaded, so the checkpoint is not read again every round.
    """
    return QueryContext(
        unlabeled=dm.unlabeled_ids(),
        pool=dm.pool.case_ids,
        labeled=dm.pool.labeled,
        image=dm.image,
        predict=lambda img: module.predict_case(img, with_embedding=True),
        modalities=list(dm.hparams.modalities),
        regions=module.regions,
        round=round,
        seed=seed,
        run_dir=run_dir,
        source=dm.split_ids.get("source", []),
        features=getattr(module, "case_features", None),
        source_artifacts=source_artifacts(module) if artifacts is None else artifacts,
    )


def sharded_rank(strategy: Strategy, ctx: QueryContext, trainer: L.Trainer) -> list[Scored]:
    """Rank the pool; under DDP, per-case strategies score a shard per rank and gather.

    Strategies whose score of a case does not depend on the other cases (``per_case``) split the
    unlabeled ids over the ranks, each scores its shard, and every rank gathers all scores; the
    others are computed whole on every rank. Either way every rank ends with the same ranking.
    """
    world = trainer.world_size
    if world > 1 and strategy.per_case and torch.distributed.is_initialized():
        shard = sorted(ctx.unlabeled)[trainer.global_rank :: world]
        local = strategy.score(dataclasses.replace(ctx, unlabeled=shard))
        gathered: list[list[Scored]] = [[] for _ in range(world)]
        torch.distributed.all_gather_object(gathered, local)
        scored = [s for part in gathered for s in part]
        if sorted(s.case_id for s in scored) != sorted(ctx.unlabeled):
            raise RuntimeError("sharded scoring lost or duplicated cases")
        return sorted(scored, key=lambda s: (-s.score, s.case_id))
    return strategy.rank(ctx)


class ActiveQueryCallback(L.Callback):
    """Grow the labeled target pool during a single ``fit``.

    Queries happen before epoch 0 (the source model scores the pool) and then after every
    ``stride`` epochs, one case at a time for ``sequential`` strategies; ``one_off`` strategies
    spend the whole budget before epoch 0. Each query: rank the unlabeled cases with the
    strategy, take the best, optionally elect the modality to annotate, ask the oracle, and
    move the case to the labeled pool; the datamodule's training epochs draw from the labeled
    set as it is at fetch time, so the next epoch trains on it.

    With the ``files`` oracle a query writes an annotation request into the run folder and
    either waits for the label file or (``oracle_args: {wait: false}``, or on timeout) saves
    ``<run>/checkpoints/pending.ckpt`` and stops with :class:`AnnotationPending`; the same
    command with ``--ckpt_path`` that checkpoint continues once the label exists.

    Args:
        budget: number of cases to label (0 disables querying, e.g. for source training).
        stride: epochs between two queries.
        strategy: registered strategy name (``random``, ``entropy``, ``mmacts``, ...).
        strategy_args: keyword arguments of the strategy.
        elect_modality: run the dominant-modality election for each queried case.
        election_per_class: compare single-modality and all-modality predictions by the mean Dice
            over foreground classes (multi-region tasks) instead of the foreground as one region
            (the paper's binary tasks, the default).
        oracle: ``simulated`` (stored masks) or ``files`` (a human annotator).
        oracle_args: ``FileOracle`` options (``wait``, ``timeout``, ``poll``, ``allow_empty``).
        use_modality_masks: the simulated oracle returns the mask drawn on the elected modality.
        seed: seed of the strategies' random draws.
        restart_schedule_each_round: restart the learning-rate decay after each query (default:
            one schedule over the whole run, ALGORITHMS.md 1.6).
        run_dir: where the query log, requests and caches go (default: the trainer's log dir).
    """

    def __init__(
        self,
        budget: int = 0,
        stride: int = 5,
        strategy: str = "random",
        strategy_args: dict[str, Any] | None = None,
        elect_modality: bool = False,
        election_per_class: bool = False,
        oracle: Literal["simulated", "files"] = "simulated",
        oracle_args: dict[str, Any] | None = None,
        use_modality_masks: bool = True,
        seed: int = 0,
        restart_schedule_each_round: bool = False,
        run_dir: str | None = None,
    ) -> None:
        if budget < 0:
            raise ValueError(f"active.budget must be >= 0, got {budget}")
        if stride < 1:
            raise ValueError(f"active.stride must be >= 1 epoch, got {stride}")
        self.budget, self.stride, self.seed = budget, stride, seed
        args = dict(strategy_args or {})
        if "budget" in inspect.signature(REGISTRY.get(strategy, Strategy).__init__).parameters:
            args.setdefault("budget", budget)  # one-off strategies select the whole budget
        self.strategy = build_strategy(strategy, **args)
        self.elect, self.election_per_class = elect_modality, election_per_class
        self.oracle_kind, self.oracle_args = oracle, dict(oracle_args or {})
        self.oracle: Oracle = SimulatedOracle(use_modality_masks)
        self.run_dir = run_dir
        self.restart_schedule = restart_schedule_each_round
        self.n_queried = 0
        self.round = 0
        self.last_query_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self._artifacts: dict[str, Any] | None = None  # source checkpoint extras, read in setup

    # ------------------------------------------------------------------ schedule
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.budget == 0:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "unlabeled_ids"):
            raise ValueError("ActiveQueryCallback needs an ActiveDataModule")
        if getattr(dm.hparams, "stage", "target") != "target":
            raise ValueError("active.budget > 0 needs data.stage: target")
        available = len(dm.pool)
        if self.budget > available:
            raise ValueError(
                f"active.budget={self.budget} exceeds the target pool ({available} cases)"
            )
        offered = {"features"} | ({"source"} if dm.split_ids.get("source") else set())
        self._artifacts = source_artifacts(pl_module)
        offered |= {"source_" + k.removeprefix("stdr_") for k in self._artifacts}
        missing = sorted(self.strategy.needs - offered)
        if missing:
            raise ValueError(f"strategy {self.strategy.name!r} needs {missing}, which this run lacks")
        check_schedule(trainer, self.budget, self.stride, self.strategy.schedule)
        if self.oracle_kind == "files":
            self.oracle = FileOracle(
                self._run_dir(trainer), list(dm.hparams.labels.values()), **self.oracle_args
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Round 0, before any training (the source model scores the pool), or a pending one."""
        self.history += resume_notes(trainer)  # a resume under a changed definition
        if self.pending:
            self._drain(trainer, pl_module)
        elif self.budget and self.n_queried == 0 and self.last_query_epoch is None:
            n = self.budget if self.strategy.schedule == "one_off" else 1
            self._query(trainer, pl_module, n, epoch=-1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        due = (epoch + 1) % self.stride == 0 and epoch + 1 < epochs_in_run(trainer)
        if (
            due
            and self.strategy.schedule == "sequential"
            and self.n_queried < self.budget
            and self.last_query_epoch != epoch
        ):
            self._query(trainer, pl_module, 1, epoch=epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget:  # a run that ended short of its budget says so in the query log
            self.history += shortfall_notes(trainer, self.budget, self.n_queried)
            self._write_log(trainer)

    # ------------------------------------------------------------------ one query
    def _query(self, trainer: L.Trainer, pl_module: L.LightningModule, n: int, epoch: int) -> None:
        dm = trainer.datamodule
        n = min(n, self.budget - self.n_queried, len(dm.unlabeled_ids()))
        if n <= 0:
            return
        ctx = query_context(
            dm, pl_module, self.round, self.seed, self._run_dir(trainer), self._artifacts
        )
        t0 = time.perf_counter()
        ranked = sharded_rank(self.strategy, ctx, trainer)
        seconds = time.perf_counter() - t0
        picks: list[Scored] = trainer.strategy.broadcast(ranked[:n], src=0)
        for rank, pick in enumerate(picks):
            modality, election = None, None
            if self.elect:
                from lightning_ada.active.election import elect_modality

                result = elect_modality(
                    dm.image(pick.case_id), pl_module.predict_case, ctx.modalities,
                    multiclass=self.election_per_class,
                )
                modality, election = trainer.strategy.broadcast((result.modality, dict(result.dice)), src=0)
            self.pending.append(
                {
                    "round": self.round,
                    "epoch": epoch,
                    "case_id": pick.case_id,
                    "rank": rank,
                    "score": pick.score,
                    "factors": pick.factors,
                    "modality": modality,
                    "election_dice": election,
                    "why": "elected modality: best Dice of its single-modality prediction against "
                    "the all-modality pseudo-label" if election else "",
                    "strategy": self.strategy.name,
                    "scoring_seconds": seconds,
                    "timings": dict(self.strategy.timings),
                    "pool_size": len(ranked),
                    "case_meta": dict(dm.case(pick.case_id).meta),
                }
            )
        self.last_query_epoch = epoch
        self._drain(trainer, pl_module)

    def _drain(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Ask the oracle for every pending query; checkpoint and stop if one is not ready."""
        dm = trainer.datamodule
        while self.pending:
            entry = self.pending[0]
            case = dm.case(entry["case_id"])
            label_path = None
            if trainer.is_global_zero:
                if isinstance(self.oracle, FileOracle):
                    self._write_request(trainer, pl_module, entry)
                label_path = self.oracle.annotate(case, entry["modality"], entry)
            label_path = trainer.strategy.broadcast(label_path, src=0)
            if label_path is None:
                self._write_log(trainer)
                ckpt = self._run_dir(trainer) / "checkpoints" / "pending.ckpt"
                trainer.save_checkpoint(ckpt, weights_only=False)
                labels = [self.oracle.label_path(e["case_id"]) for e in self.pending]  # type: ignore[attr-defined]
                raise AnnotationPending(ckpt, labels)
            dm.label(entry["case_id"], label_path, entry["modality"], round=entry["round"], epoch=entry["epoch"])
            self.pending.pop(0)
            self.n_queried += 1
            self.history.append(entry | {"label_path": label_path, "n_labeled": dm.pool.n_labeled})
            rank_zero_info(
                f"[active] round {entry['round']} (after epoch {entry['epoch']}): queried "
                f"{entry['case_id']} score={entry['score']:.4g} modality={entry['modality']} "
                f"-> {dm.pool.n_labeled} labeled"
            )
        self.round += 1
        if self.restart_schedule and hasattr(pl_module, "restart_lr_schedule"):
            pl_module.restart_lr_schedule()
        for logger in trainer.loggers:
            logger.log_metrics({"active/n_labeled": dm.pool.n_labeled}, step=trainer.global_step)
        self._write_log(trainer)

    def _write_request(self, trainer: L.Trainer, pl_module: Any, entry: dict[str, Any]) -> None:
        """The request JSON, the current prediction in the original geometry and a preview."""
        from lightning_ada.active.preview import save_preview
        from lightning_ada.predict import write_mask

        oracle: FileOracle = self.oracle  # type: ignore[assignment]
        if oracle.request_path(entry["round"], entry["case_id"]).exists():
            return
        dm = trainer.datamodule
        image = dm.image(entry["case_id"])
        pred = pl_module.predict_case(image).argmax(0)

        def write_prediction(path: Path) -> None:
            write_mask(dm.invert(pred[None], entry["case_id"]), path)

        def write_preview(path: Path) -> None:
            save_preview(path, image, pred, list(dm.hparams.modalities), entry["modality"],
                         f"{entry['case_id']} (round {entry['round']})")

        oracle.write_request(dm.case(entry["case_id"]), entry["modality"], entry,
                             write_prediction, write_preview)

    # ------------------------------------------------------------------ log and state
    def _run_dir(self, trainer: L.Trainer) -> Path:
        # ``trainer.log_dir`` is a collective call under DDP: every rank must reach it
        return Path(self.run_dir or trainer.log_dir or trainer.default_root_dir)

    def _write_log(self, trainer: L.Trainer) -> None:
        path = self._run_dir(trainer) / "query_log.json"
        if trainer.is_global_zero:
            with write_errors_named(path):
                write_json_atomic(path, self.history)

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_queried": self.n_queried,
            "round": self.round,
            "last_query_epoch": self.last_query_epoch,
            "history": self.history,
            "pending": self.pending,
            "strategy": self.strategy.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.n_queried = state_dict["n_queried"]
        self.round = state_dict["round"]
        self.last_query_epoch = state_dict["last_query_epoch"]
        self.history = list(state_dict["history"])
        self.pending = list(state_dict.get("pending", []))
        self.strategy.load_state_dict(state_dict.get("strategy", {}))
