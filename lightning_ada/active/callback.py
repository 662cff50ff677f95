"""ActiveQueryCallback: the query schedule and its orchestration. It computes no score itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from jsonargparse import lazy_instance
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.utilities import rank_zero_info

from lightning_ada.active.cost import AnnotationTime, mean_case_voxels, query_cost
from lightning_ada.active.open_set_filter import PrototypeFilter
from lightning_ada.active.oracles import ORACLES, Oracle, Request
from lightning_ada.active.preview import save_preview, save_region_preview
from lightning_ada.active.query_round import Election, ask_oracle, query_context, query_round
from lightning_ada.active.self_training import SelfTraining
from lightning_ada.active.strategies import REGISTRY, RunInfo, Strategy
from lightning_ada.active.strategies.random import RandomStrategy
from lightning_ada.active.units import UNITS, AnnotationUnit, Region
from lightning_ada.data.pool_view import PoolView
from lightning_ada.errors import AnnotationPending, ConfigError
from lightning_ada.io import write_json_atomic, write_mask
from lightning_ada.phantom.open_set import ood_kind, purity
from lightning_ada.run.checkpoint_io import write_errors_named
from lightning_ada.run.guard import resume_notes
from lightning_ada.run.schedule import (
    check_schedule,
    check_step_schedule,
    early_stopping_now,
    epochs_in_run,
    nothing_to_train_note,
    shortfall_notes,
    steps_in_run,
)
from lightning_ada.weights import read_checkpoint

#: the oracle of a run that names none: the registered ``simulated`` oracle (stored masks)
DEFAULT_ORACLE = "simulated"
#: the unit of a run that names none: the whole case
DEFAULT_UNIT = "case"
#: spent budget below this is the budget spent (float sums of scan equivalents)
EPS = 1e-9


class ActiveQueryCallback(L.Callback):
    """Grow the labeled target pool during a single ``fit``.

    Queries happen before epoch 0 (the source model scores the pool) and then after every
    ``stride`` epochs (or every ``stride_steps`` optimiser steps), one case at a time for
    ``sequential`` strategies; ``one_off`` strategies spend the whole budget before epoch 0.
    Each query: rank the unlabeled cases with the strategy, take the best, optionally elect the
    modality to annotate, ask the oracle, and move the case to the labeled pool; the
    datamodule's training epochs draw from the labeled set as it is at fetch time, so the next
    epoch (with ``stride_steps``: the batches fetched after the query) trains on it.

    The oracle is asked through its protocol (:mod:`lightning_ada.active.oracles.base`): an
    answer that is still pending or timed out (e.g. the ``files`` oracle with ``--active.oracle
    .wait false``, or after its timeout) saves ``<run>/checkpoints/pending.ckpt`` and stops with
    :class:`~lightning_ada.errors.AnnotationPending`; the same command with ``--ckpt_path`` that
    checkpoint asks again and continues once the label is delivered.

    Args:
        budget: how much to annotate (0 disables querying, e.g. for source training): cases
            with the ``case`` unit; whole-scan equivalents (annotated voxels / the mean voxels
            of a pool case) with a sub-volume unit, one scan's worth per query round.
        stride: epochs between two queries (default 5 when neither ``stride`` nor
            ``stride_steps`` is given).
        stride_steps: optimiser steps between two queries instead (a query after every
            ``stride_steps``-th step, while another step follows; the authors' protocol is
            10,000 steps). Mutually exclusive with ``stride``: a config that sets ``stride``
            needs ``--active.stride null`` to query by steps. The query log records each
            query's ``step`` (0: before training).
        strategy: the query strategy: a short name on the command line (``--active.strategy
            mmacts``; the names are listed below) or ``class_path``/``init_args`` (any
            :class:`~lightning_ada.active.strategies.Strategy` subclass); its options follow as
            ``--active.strategy.<option>``.
        elect_modality: run the dominant-modality election for each queried case.
        election_per_class: compare single-modality and all-modality predictions by the mean Dice
            over foreground classes (multi-region tasks) instead of the foreground as one region
            (the paper's binary tasks, the default).
        oracle: who delivers the masks: ``simulated`` (stored masks; option
            ``use_modality_masks``) or ``files`` (a human annotator; options ``wait``,
            ``timeout``, ``poll``, ``allow_empty``), as a short name or ``class_path``.
        seed: seed of the strategies' random draws.
        restart_schedule_each_round: restart the learning-rate decay after each query (default:
            one schedule over the whole run, ALGORITHMS.md 1.6).
        run_dir: where the query log, requests and caches go (default: the trainer's log dir).
        open_set_filter: OpenPath's prototype pre-filter in front of the strategy (open-set
            pools; ``--active.open_set_filter PrototypeFilter``, options
            ``--active.open_set_filter.id_ratio`` ...); None: rank the whole pool.
        self_training: pseudo-label self-training of the unlabeled pool alongside the queried
            labels (:class:`~lightning_ada.active.self_training.SelfTraining`,
            ``--active.self_training SelfTraining``, options ``--active.self_training.ratio``
            ...); None (default): train on the labeled cases only.
        unit: what one query asks for (:mod:`lightning_ada.active.units`): ``case`` (the whole
            case, the default), ``slices`` (options ``k``, ``axis``, ``modality_axes``) or
            ``patch`` (option ``size``), as a short name or ``class_path``; a sub-volume unit
            needs a strategy that ranks regions.
        annotation_time: the annotation-time model recorded with every query's cost
            (:class:`~lightning_ada.active.cost.AnnotationTime`; its defaults are assumptions);
            None: no time recorded.
    """

    def __init__(
        self,
        budget: NonNegativeInt = 0,
        stride: PositiveInt | None = None,
        stride_steps: PositiveInt | None = None,
        strategy: Strategy = lazy_instance(RandomStrategy),
        elect_modality: bool = False,
        election_per_class: bool = False,
        oracle: Oracle = lazy_instance(ORACLES[DEFAULT_ORACLE]),
        seed: int = 0,
        restart_schedule_each_round: bool = False,
        run_dir: str | None = None,
        open_set_filter: PrototypeFilter | None = None,
        self_training: SelfTraining | None = None,
        unit: AnnotationUnit = lazy_instance(UNITS[DEFAULT_UNIT]),
        annotation_time: AnnotationTime | None = None,
    ) -> None:
        if budget < 0:
            raise ValueError(f"active.budget must be >= 0, got {budget}")
        if stride is not None and stride_steps is not None:
            raise ValueError(
                f"active.stride={stride} (epochs) and active.stride_steps={stride_steps} "
                "(optimiser steps) are mutually exclusive: set one (--active.stride null to query "
                "by steps on a config that sets the epoch stride)"
            )
        if stride is None and stride_steps is None:
            stride = 5
        if stride is not None and stride < 1:
            raise ValueError(f"active.stride must be >= 1 epoch, got {stride}")
        if stride_steps is not None and stride_steps < 1:
            raise ValueError(f"active.stride_steps must be >= 1 optimiser step, got {stride_steps}")
        self.budget, self.stride, self.stride_steps, self.seed = budget, stride, stride_steps, seed
        self.strategy = strategy
        self.elect, self.election_per_class = elect_modality, election_per_class
        self.oracle = oracle
        self.run_dir = run_dir
        self.open_set_filter = open_set_filter
        self.self_training = self_training
        self.unit = unit
        self.annotation_time = annotation_time
        #: whole-scan equivalents spent (sub-volume units; the case unit counts ``n_queried``)
        self.spent = 0.0
        #: whole-scan equivalents the rounds made so far were to spend (the next round may spend
        #: what an earlier one could not, when regions do not tile a scan)
        self.target = 0.0
        self._scan_voxels = 1.0  # voxels of one whole-scan equivalent (set at setup)
        self.refused: list[str] = []
        self.restart_schedule = restart_schedule_each_round
        self.n_queried = 0
        self.round = 0
        self.last_query_epoch: int | None = None
        self.last_query_step: int | None = None
        self._steps_in_run: float | None = None  # this fit's optimiser steps (stride_steps)
        self.history: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self.pool: PoolView | None = None
        self._with_features = False
        #: nothing asked or answered since the state was loaded from a checkpoint
        self._as_loaded = False

    # ------------------------------------------------------------------ schedule
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.budget == 0:
            return
        self.prepare(trainer, pl_module)
        available = len(self._pool().ids("pool"))
        if self.budget > available:
            what = "" if self.unit.budget_in == "cases" else " (whole-scan equivalents)"
            raise ConfigError(
                f"active.budget={self.budget}{what} exceeds the target pool ({available} cases)"
            )
        if self.stride_steps is not None:
            check_step_schedule(trainer, self.budget, self.stride_steps, self.strategy.schedule)
        else:
            check_schedule(trainer, self.budget, self.stride, self.strategy.schedule)

    def prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Hand the strategy and the oracle what they need of the run; check the strategy's needs.

        Raises:
            ConfigError: not a target-stage active datamodule, or the strategy needs what this
                model or data cannot give (the message names it).
        """
        try:
            self._prepare(trainer, pl_module)
        except ConfigError:
            raise
        except ValueError as bad:  # e.g. source anchors made with other settings
            raise ConfigError(str(bad)) from bad

    def _prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "pool_view"):
            raise ConfigError("ActiveQueryCallback needs a datamodule with pool_view() (ActiveDataModule)")
        self.pool = dm.pool_view()
        if self.pool.stage != "target":
            raise ConfigError("active.budget > 0 needs data.stage: target")
        progress = trainer.is_global_zero and trainer.progress_bar_callback is not None
        self.strategy.configure_run(RunInfo(budget=self.budget, progress=progress))
        offered = set(getattr(pl_module, "query_outputs", lambda: {"embedding"})())
        if self.pool.ids("source"):
            offered.add("source")
        missing = sorted(self.strategy.needs - offered)
        if missing:
            raise ConfigError(
                f"strategy {self.strategy.name!r} needs {missing}, which this run lacks "
                f"(it offers {sorted(offered)}; 'features' needs net: dynunet, 'source' a source split)"
            )
        self._with_features = "features" in offered
        if self.unit.name not in self.strategy.units:
            region_rules = sorted(n for n, c in REGISTRY.items() if self.unit.name in c.units)
            raise ConfigError(
                f"strategy {self.strategy.name!r} ranks {', '.join(sorted(self.strategy.units))} "
                f"queries, not the {self.unit.name!r} unit; with --active.unit {self.unit.name} "
                f"use one of: {', '.join(region_rules) or 'none registered'}"
            )
        pool = self.pool
        self._scan_voxels = mean_case_voxels(tuple(pool.image(c).shape[1:]) for c in pool.ids("pool"))
        if self.strategy.source_callback is not None:
            self._load_source_artifacts(pl_module)
        self.oracle.configure(self._run_dir(trainer), self.pool)

    def _load_source_artifacts(self, pl_module: L.LightningModule) -> None:
        path = getattr(pl_module.hparams, "source_checkpoint", None)
        if not path:
            callback = self.strategy.source_callback
            raise ConfigError(
                f"strategy {self.strategy.name!r} reads what the callback "
                f"{callback.__module__}.{callback.__qualname__} saved with the source "
                "checkpoint: set model.source_checkpoint"
            )
        self.strategy.load_source_artifacts(read_checkpoint(path), str(path))

    def _pool(self) -> PoolView:
        if self.pool is None:
            raise RuntimeError("ActiveQueryCallback used before setup")
        return self.pool

    @property
    def by_scans(self) -> bool:
        """The budget counts whole-scan equivalents (a sub-volume unit), not cases."""
        return self.unit.budget_in == "scans"

    def remaining(self) -> float:
        """Budget left: cases (the case unit) or whole-scan equivalents."""
        return self.budget - (self.spent if self.by_scans else self.n_queried)

    def _region_context(self) -> bool:
        """Whether rounds rank regions (a region rule), not whole cases (a case strategy)."""
        return self.strategy.region_level

    def run_definition(self) -> dict[str, Any]:
        """This callback's entries of the run definition (:mod:`lightning_ada.run.definition`):
        the strategy's name, the budget and the self-training option."""
        st = self.self_training
        return {
            "strategy": self.strategy.name or type(self.strategy).__name__,
            "unit": self.unit.describe(),
            "budget": int(self.budget),
            "self_training": None if st is None else repr(st),
        }

    def rank_pool(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict[str, Any]]:
        """Rank every unlabeled case with the strategy and elect the modality of each, without
        asking the oracle or labelling anything (``lightning-ada query``).

        With the open-set pre-filter (``open_set_filter``), as ``fit`` applies it to its next
        round: the strategy ranks only the filter's candidates (at least as many as that round
        queries), and every case the filter leaves out follows them, unranked, with
        ``filtered_out`` and its prototype distance. Cases the oracle refused are left out.
        A region rule (a sub-volume ``unit``) ranks regions instead: every region of a case with
        voxels still unannotated that does not overlap a better-ranked one, each entry with its
        ``region`` and ``part``, as ``fit``'s next round would take them.

        Returns:
            One entry per case (or region), best first
            (:attr:`~lightning_ada.active.query_round.RoundResult.picks`),
            then the cases the pre-filter left out (``rank`` None).
        """
        self.prepare(trainer, pl_module)
        pool = self._pool()
        regions = self._region_context()
        ctx = query_context(pool, pl_module, self.round, self.seed, self._run_dir(trainer),
                            self._with_features, exclude=self.refused,
                            unit=self.unit if regions else None)
        election = Election(pl_module.predict_case, self.election_per_class)
        # every case, or every region that does not overlap a better one (a region rule)
        n = sys.maxsize if regions else len(ctx.unlabeled)
        result = query_round(self.strategy, ctx, n, trainer, pool,
                             election=election, prefilter=self.open_set_filter,
                             round_size=self._next_round_size(len(ctx.unlabeled)))
        picks = [e | ({"open_set_candidate": True} if result.filtered else {})
                 for e in result.picks]
        if result.filtered is not None:
            ranked = {e["case_id"] for e in picks}
            picks += [
                {"round": self.round, "case_id": cid, "rank": None, "score": None,
                 "factors": result.filtered.factors(cid), "modality": None,
                 "election_dice": None, "open_set_candidate": False, "filtered_out": True}
                for cid in sorted(ctx.unlabeled, key=lambda c: result.filtered.distances.get(c, 0.0))
                if cid not in ranked
            ]
        return picks

    def _next_round_size(self, unlabeled: int) -> int:
        """Cases the next round of ``fit`` queries: the whole budget left for a one-off
        strategy's round 0, else one."""
        if self.strategy.schedule == "one_off" and self.n_queried == 0 and not self.by_scans:
            return max(1, min(int(self.budget), unlabeled))
        return 1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Round 0, before any training (the source model scores the pool), or a pending one."""
        self._steps_in_run = None  # measured again for this fit
        self.history += resume_notes(trainer)  # a resume under a changed definition
        boundary = 0  # completed epochs before this fit trains: 0, or a file-oracle resume's
        if self.pending:
            asked = int(self.pending[0].get("epoch", -1))
            if self.stride_steps is None:  # asked at the end of epoch `asked` (-1: before epoch 0)
                boundary = asked + 1
            self._drain(trainer, pl_module)
        elif self.budget and self.n_queried == 0 and self.last_query_epoch is None:
            n = self.budget if self.strategy.schedule == "one_off" else 1
            self._query(trainer, pl_module, n, epoch=-1)
            pool = self._pool()
            if self.refused and not pool.labeled() and self.self_training is None:
                # every query refused: the budget is spent (each refusal was replaced at once)
                self.history.append(nothing_to_train_note(trainer, self.refused))
                self._write_log(trainer)
                # no epoch will end, so no checkpoint callback will save: the run's model (the
                # source model) and its query history go to last.ckpt for test / resume
                trainer.save_checkpoint(self._run_dir(trainer) / "checkpoints" / "last.ckpt")
        if self.self_training is not None:  # lightning_ada/active/self_training.py
            self.self_training.on_fit_start(
                trainer, pl_module, self._run_dir(trainer), self.refused, boundary
            )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """With ``stride_steps``: query after every ``stride_steps``-th optimiser step."""
        if self.stride_steps is None or self.strategy.schedule != "sequential":
            return
        step = trainer.global_step
        if step == 0 or step % self.stride_steps or step == self.last_query_step:
            return  # not due, or a batch that accumulated gradients without a step
        if self.remaining() <= EPS or trainer.should_stop:
            return
        if self._steps_in_run is None:
            self._steps_in_run = steps_in_run(trainer)
        if step < self._steps_in_run:  # another step follows that trains on the new label
            self._query(trainer, pl_module, 1, epoch=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stride_steps is not None:
            return
        epoch = trainer.current_epoch
        due = (epoch + 1) % self.stride == 0 and epoch + 1 < epochs_in_run(trainer)
        if (
            due
            and self.strategy.schedule == "sequential"
            and self.remaining() > EPS
            and self.last_query_epoch != epoch
            and not early_stopping_now(trainer)  # the run stops here: no epoch would train on it
        ):
            self._query(trainer, pl_module, 1, epoch=epoch)
        if self.self_training is not None:  # after the query: the new label is not pseudo-labelled
            self.self_training.on_train_epoch_end(trainer, pl_module, self._run_dir(trainer), self.refused)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget:  # a run that ended short of its budget says so in the query log
            spent = round(self.spent, 6) if self.by_scans else self.n_queried
            self.history += shortfall_notes(trainer, self.budget, spent)  # type: ignore[arg-type]
            self._write_log(trainer)

    # ------------------------------------------------------------------ one query
    def _query(self, trainer: L.Trainer, pl_module: L.LightningModule, n: float, epoch: int) -> None:
        """One round: ``n`` cases, or ``n`` whole-scan equivalents of regions (sub-volume units),
        within the budget left."""
        pool = self._pool()
        allowance = None
        if self.by_scans:
            self.target = min(float(self.budget), self.target + float(n))
            scans = self.target - self.spent
            if scans <= EPS:
                return
            allowance, n = int(round(scans * self._scan_voxels)), len(pool.ids("pool"))
        else:
            n = int(min(n, self.remaining(), len(pool.unlabeled()) - len(self.refused)))
            if n <= 0:
                return
        step = trainer.global_step  # 0 before training: the query's place in steps
        ctx = query_context(
            pool, pl_module, self.round, self.seed, self._run_dir(trainer), self._with_features,
            exclude=self.refused, unit=self.unit if self._region_context() else None,
        )
        election = Election(pl_module.predict_case, self.election_per_class) if self.elect else None
        result = query_round(
            self.strategy, ctx, int(n), trainer, pool, election=election, epoch=epoch,
            prefilter=self.open_set_filter, allowance=allowance,
        )
        self.pending.extend({**entry, "step": step} for entry in result.picks)
        self.last_query_epoch, self.last_query_step = epoch, step
        self._as_loaded = False
        self._drain(trainer, pl_module)

    def _drain(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Ask the oracle for every pending query; checkpoint and stop if one is still waiting."""
        pool = self._pool()
        asked = ask_oracle(
            self.pending, self.oracle, trainer, pool, lambda e: self.request_for(pl_module, e)
        )
        for entry in asked.delivered:
            self.n_queried += 1
            if entry.get("refused"):
                self.refused.append(entry["case_id"])
                entry["cost"] = self._refused_cost(entry)
            else:
                entry["cost"] = query_cost(entry.pop("added"), self._scan_voxels,
                                           self.annotation_time)
            self.spent += entry["cost"]["scans"]
            entry["ood"] = ood_kind(entry.get("case_meta") or {})
            self.history.append(entry)
            entry["purity"] = purity([e.get("case_meta") or {} for e in self.history])
            rank_zero_info(
                f"[active] round {entry['round']} (after epoch {entry['epoch']}): queried "
                f"{entry['case_id']} score={entry['score']:.4g} modality={entry['modality']} "
                f"-> {entry['n_labeled']} labeled"
            )
        self.pending = asked.pending
        if asked.delivered:
            self._as_loaded = False
        if asked.waiting is not None:
            self._write_log(trainer)
            ckpt = self._run_dir(trainer) / "checkpoints" / "pending.ckpt"
            if not (self._as_loaded and _same_file(trainer.ckpt_path, ckpt)):
                # a resume that found nothing new leaves its checkpoint (and the folder) as it was
                trainer.save_checkpoint(ckpt, weights_only=False)
            waiting = asked.waiting
            awaiting = waiting.awaiting or f"the annotation of {self.pending[0]['case_id']}"
            raise AnnotationPending(ckpt, [awaiting], self.oracle.where(), waiting.reason)
        self.round += 1
        if self.restart_schedule and hasattr(pl_module, "restart_lr_schedule"):
            pl_module.restart_lr_schedule()
        for logger in trainer.loggers:
            logger.log_metrics({"active/n_labeled": len(pool.labeled())}, step=trainer.global_step)
        self._write_log(trainer)
        refused = [e for e in asked.delivered if e.get("refused")]
        if refused:  # each refused query is replaced at once from the remaining budget
            n = sum(e["cost"]["scans"] for e in refused) if self.by_scans else len(refused)
            self._query(trainer, pl_module, n, epoch=refused[-1]["epoch"])

    def _refused_cost(self, entry: dict[str, Any]) -> dict[str, float]:
        """A refused query spends what it asked for (its label is spent, nothing trained on)."""
        shape = tuple(self._pool().image(entry["case_id"]).shape[1:])
        voxels = Region.from_json(entry.get("region")).voxels(shape)
        cost = {"voxels": 0.0, "slices": 0.0, "slices_with_tumour": 0.0,
                "foreground_voxels": 0.0, "new_case": 0.0, "scans": voxels / self._scan_voxels,
                "asked_voxels": float(voxels)}
        return cost | ({"seconds": 0.0} if self.annotation_time is not None else {})

    def request_for(self, pl_module: Any, entry: dict[str, Any]) -> Request:
        """The oracle's request for a query (an entry of a round), with the current prediction
        (computed at most once, only if the oracle asks for it) to write as a NIfTI mask or a
        preview."""
        pool = self._pool()
        case_id = entry["case_id"]
        predicted: list[torch.Tensor] = []

        def prediction() -> torch.Tensor:
            if not predicted:
                predicted.append(pl_module.predict_case(pool.image(case_id)).argmax(0))
            return predicted[0]

        def write_prediction(path: Path) -> None:
            write_mask(pool.invert(prediction()[None], case_id), path)

        region = Region.from_json(entry["region"]) if entry.get("region") else None
        title = f"{case_id} (round {entry['round']})"

        def write_preview(path: Path) -> None:
            if region is None or region.kind == "case":
                save_preview(path, pool.image(case_id), prediction(), list(pool.modalities),
                             entry["modality"], title)
            else:
                save_region_preview(path, pool.image(case_id), prediction(), region,
                                    list(pool.modalities), entry["modality"], f"{title}: {region.describe()}")

        inverted: list[torch.Tensor] = []

        def asked() -> torch.Tensor:  # inverted once: the record and the mask file both read it
            assert region is not None
            if not inverted:
                shape = tuple(pool.image(case_id).shape[1:])
                inverted.append(pool.invert(region.mask(shape)[None].long(), case_id))
            return inverted[0]

        def write_asked(path: Path) -> None:
            write_mask(asked() > 0, path)

        return Request(pool.case(case_id), entry["modality"], entry, write_prediction, write_preview,
                       region=region,
                       asked=(lambda: (asked()[0] > 0).numpy()) if region is not None else None,
                       write_asked=write_asked if region is not None else None)

    # ------------------------------------------------------------------ log and state
    def _run_dir(self, trainer: L.Trainer) -> Path:
        # ``trainer.log_dir`` is a collective call under DDP: every rank must reach it
        return Path(self.run_dir or trainer.log_dir or trainer.default_root_dir)

    def _write_log(self, trainer: L.Trainer) -> None:
        path = self._run_dir(trainer) / "query_log.json"
        if trainer.is_global_zero:
            with write_errors_named(path):
                if not _holds_json(path, self.history):  # unchanged: left as it is
                    write_json_atomic(path, self.history)

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_queried": self.n_queried,
            "spent": self.spent,
            "target": self.target,
            "round": self.round,
            "last_query_epoch": self.last_query_epoch,
            "last_query_step": self.last_query_step,
            "history": self.history,
            "pending": self.pending,
            "refused": self.refused,
            "strategy": self.strategy.state_dict(),
            "self_training": self.self_training.state_dict() if self.self_training else {},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.n_queried = state_dict["n_queried"]
        self.spent = float(state_dict.get("spent", 0.0))
        self.target = float(state_dict.get("target", self.spent))
        self.round = state_dict["round"]
        self.last_query_epoch = state_dict["last_query_epoch"]
        self.last_query_step = state_dict.get("last_query_step")
        self.history = list(state_dict["history"])
        self.pending = list(state_dict.get("pending", []))
        self._as_loaded = True
        self.refused = list(state_dict.get("refused", []))
        self.strategy.load_state_dict(state_dict.get("strategy", {}))
        if self.self_training is not None:
            self.self_training.load_state_dict(state_dict.get("self_training", {}))


def _same_file(a: str | Path | None, b: Path) -> bool:
    """Whether ``a`` names the existing file ``b``."""
    try:
        return a is not None and b.is_file() and Path(a).resolve() == b.resolve()
    except OSError:
        return False


def _holds_json(path: Path, obj: Any) -> bool:
    """Whether ``path`` already holds ``obj`` as :func:`~lightning_ada.io.write_json_atomic`
    writes it."""
    try:
        return path.read_text() == json.dumps(obj, indent=2, sort_keys=False, default=str)
    except (OSError, UnicodeDecodeError):
        return False
