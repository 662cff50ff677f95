"""ActiveQueryCallback: the query schedule and its orchestration. It computes no score itself."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
from lightning.pytorch.utilities import rank_zero_info

from lightning_ada.active.oracle import Oracle, SimulatedOracle
from lightning_ada.active.strategies import QueryContext, Scored, build_strategy
from lightning_ada.data.cases import write_json_atomic


class ActiveQueryCallback(L.Callback):
    """Grow the labeled target pool during a single ``fit``.

    Queries happen before epoch 0 (the source model scores the pool) and then after every
    ``stride`` epochs, one case at a time for ``sequential`` strategies; ``one_off`` strategies
    spend the whole budget before epoch 0. Each query: rank the unlabeled cases with the
    strategy, take the best, optionally elect the modality to annotate, ask the oracle, and
    move the case to the labeled pool; the datamodule's training epochs draw from the labeled
    set as it is at fetch time, so the next epoch trains on it.

    Args:
        budget: number of cases to label (0 disables querying, e.g. for source training).
        stride: epochs between two queries.
        strategy: registered strategy name (``random``, ...).
        strategy_args: keyword arguments of the strategy.
        elect_modality: run the dominant-modality election for each queried case.
        oracle: ``simulated`` (stored masks).
        use_modality_masks: the simulated oracle returns the mask drawn on the elected modality.
        seed: seed of the strategies' random draws.
        restart_schedule_each_round: restart the learning-rate decay after each query (default:
            one schedule over the whole run, ALGORITHMS.md 1.6).
        run_dir: where the query log is written (default: the trainer's log dir).
    """

    def __init__(
        self,
        budget: int = 0,
        stride: int = 5,
        strategy: str = "random",
        strategy_args: dict[str, Any] | None = None,
        elect_modality: bool = False,
        oracle: Literal["simulated"] = "simulated",
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
        self.strategy = build_strategy(strategy, **(strategy_args or {}))
        self.elect = elect_modality
        self.oracle: Oracle = SimulatedOracle(use_modality_masks)
        self.run_dir = run_dir
        self.restart_schedule = restart_schedule_each_round
        self.n_queried = 0
        self.round = 0
        self.last_query_epoch: int | None = None
        self.history: list[dict[str, Any]] = []

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
        missing = sorted(self.strategy.needs - {"features"} - self._offered(dm))
        if missing:
            raise ValueError(f"strategy {self.strategy.name!r} needs {missing}, which the data lacks")

    @staticmethod
    def _offered(dm: Any) -> set[str]:
        return {"source"} if dm.split_ids.get("source") else set()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Round 0, before any training: the source model scores the pool."""
        if self.budget and self.n_queried == 0 and self.last_query_epoch is None:
            n = self.budget if self.strategy.schedule == "one_off" else 1
            self._query(trainer, pl_module, n, epoch=-1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        due = (epoch + 1) % self.stride == 0 and epoch + 1 < (trainer.max_epochs or 0)
        if (
            due
            and self.strategy.schedule == "sequential"
            and self.n_queried < self.budget
            and self.last_query_epoch != epoch
        ):
            self._query(trainer, pl_module, 1, epoch=epoch)

    # ------------------------------------------------------------------ one query
    def _query(self, trainer: L.Trainer, pl_module: L.LightningModule, n: int, epoch: int) -> None:
        dm = trainer.datamodule
        n = min(n, self.budget - self.n_queried, len(dm.unlabeled_ids()))
        if n <= 0:
            return
        ctx = QueryContext(
            unlabeled=dm.unlabeled_ids(),
            pool=dm.pool.case_ids,
            labeled=dm.pool.labeled,
            image=dm.image,
            predict=lambda img: pl_module.predict_case(img, with_embedding=True),
            modalities=list(dm.hparams.modalities),
            regions=pl_module.regions,
            round=self.round,
            seed=self.seed,
            run_dir=self._run_dir(trainer),
            source=dm.split_ids.get("source", []),
            features=getattr(pl_module, "case_features", None),
        )
        t0 = time.perf_counter()
        ranked = self.strategy.rank(ctx)
        seconds = time.perf_counter() - t0
        picks: list[Scored] = trainer.strategy.broadcast(ranked[:n], src=0)
        for rank, pick in enumerate(picks):
            modality, election = None, None
            if self.elect:
                from lightning_ada.active.election import elect_modality

                result = elect_modality(dm.image(pick.case_id), pl_module.predict_case, ctx.modalities)
                modality, election = result.modality, dict(result.dice)
            modality = trainer.strategy.broadcast(modality, src=0)
            label_path = self.oracle.annotate(dm.case(pick.case_id), modality)
            dm.label(pick.case_id, label_path, modality, round=self.round, epoch=epoch)
            self.n_queried += 1
            self.history.append(
                {
                    "round": self.round,
                    "epoch": epoch,
                    "case_id": pick.case_id,
                    "rank": rank,
                    "score": pick.score,
                    "factors": pick.factors,
                    "modality": modality,
                    "election_dice": election,
                    "label_path": label_path,
                    "strategy": self.strategy.name,
                    "n_labeled": dm.pool.n_labeled,
                    "scoring_seconds": seconds,
                    "timings": dict(self.strategy.timings),
                    "pool_size": len(ranked),
                    "case_meta": dict(dm.case(pick.case_id).meta),
                }
            )
            rank_zero_info(
                f"[active] round {self.round} (after epoch {epoch}): queried {pick.case_id} "
                f"score={pick.score:.4g} modality={modality} -> {dm.pool.n_labeled} labeled"
            )
        self.round += 1
        self.last_query_epoch = epoch
        if self.restart_schedule and hasattr(pl_module, "restart_lr_schedule"):
            pl_module.restart_lr_schedule()
        for logger in trainer.loggers:
            logger.log_metrics(
                {"active/n_labeled": dm.pool.n_labeled, "active/scoring_seconds": seconds},
                step=trainer.global_step,
            )
        self._write_log(trainer)

    # ------------------------------------------------------------------ log and state
    def _run_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.run_dir or trainer.log_dir or trainer.default_root_dir)

    def _write_log(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            write_json_atomic(self._run_dir(trainer) / "query_log.json", self.history)

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_queried": self.n_queried,
            "round": self.round,
            "last_query_epoch": self.last_query_epoch,
            "history": self.history,
            "strategy": self.strategy.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.n_queried = state_dict["n_queried"]
        self.round = state_dict["round"]
        self.last_query_epoch = state_dict["last_query_epoch"]
        self.history = list(state_dict["history"])
        self.strategy.load_state_dict(state_dict.get("strategy", {}))
