"""The strategy contract: what a strategy receives, what it declares, and the name -> class registry.

A strategy is one file: a subclass of :class:`Strategy` with a ``name`` is registered when its
module is imported (``__init_subclass__``), chosen on the command line by that name
(``--active.strategy mmacts``) or in a config by ``class_path``/``init_args``, and shown in the
benchmark tables under ``display_name`` at position ``table_order``. What it needs of the run
comes through :meth:`Strategy.configure_run` (budget, progress) and
:meth:`Strategy.load_source_artifacts` (what its ``source_callback`` saved with the source
checkpoint); what it needs of the model is declared in ``needs`` and checked at setup.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from lightning_ada.active.units.base import AnnotationUnit, Candidate, Region

Predict = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]

#: what a strategy may declare in ``needs``: ``embedding`` (``ctx.predict`` returns a case
#: embedding), ``features`` (``ctx.features``: decoder features, DynUNet only), ``source`` (the
#: ids of the source split, i.e. not source-free)
NEEDS = frozenset({"embedding", "features", "source"})


@dataclass
class QueryContext:
    """Everything a strategy may look at to rank the unlabeled pool of one round.

    Args:
        unlabeled: ids of the cases to rank.
        pool: ids of every case of the target pool (labeled and not).
        labeled: ids of the labeled cases.
        image: case id -> preprocessed image ``(C, H, W, D)``.
        predict: image ``(C, H, W, D)`` -> (softmax ``(K, H, W, D)``, embedding ``(d,)`` or None)
            by the current model.
        modalities: modality names in channel order.
        regions: region name -> class indices.
        round: 0-based query round.
        seed: run seed (strategies derive their RNG from ``(seed, round)``).
        run_dir: folder for caches.
        source: ids of source cases (only for strategies that declare ``needs = {"source"}``).
        features: image ``(C, H, W, D)`` -> ``{"probs": (K, H, W, D), "embedding": (d,),
            "decoder": (F, H, W, D)}`` in one pass of the current model (None if the net cannot
            give them).
        raw_image: case id -> the case's image as stored on disk ``(M, X, Y, Z)``: raw
            intensities, full field of view, no preprocessing (None if the pool cannot read it).
        unit: the annotation unit of the run (None: whole cases, the ``case`` unit).
        candidates: ids of the cases that still have a region to ask for (region units: every
            pool case not fully annotated nor refused; the case unit: ``unlabeled``).
        annotated: case id -> boolean ``(H, W, D)`` of the voxels annotated so far, or None
            (nothing yet).
        reference: case id -> the reference label ``(H, W, D)`` (class indices) of a pool
            case, for rules that exist only in simulation (they say so in their name); None
            when the run does not offer it.
    """

    unlabeled: Sequence[str]
    pool: Sequence[str]
    labeled: Sequence[str]
    image: Callable[[str], torch.Tensor]
    predict: Predict
    modalities: Sequence[str]
    regions: dict[str, list[int]]
    round: int = 0
    seed: int = 0
    run_dir: Path | None = None
    source: Sequence[str] = ()
    features: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None
    raw_image: Callable[[str], np.ndarray] | None = None
    unit: AnnotationUnit | None = None
    candidates: Sequence[str] = ()
    annotated: Callable[[str], torch.Tensor | None] | None = None
    reference: Callable[[str], torch.Tensor] | None = None

    def rng(self) -> np.random.Generator:
        """A generator seeded by ``(seed, round)``: identical on every rank and on resume."""
        return np.random.default_rng([self.seed, self.round])


@dataclass(frozen=True)
class RunInfo:
    """What a strategy is told about the run before its first query.

    Attributes:
        budget: cases the run will label (``one_off`` strategies select all of them at once).
        progress: show progress bars while scoring (the trainer's own bar is enabled).
    """

    budget: int = 1
    progress: bool = False


@dataclass(frozen=True)
class Scored:
    """One ranked case (or region of a case): its score (higher = query first) and the factors
    that made it; ``region`` is None for a whole case ranked by a case-level strategy."""

    case_id: str
    score: float
    factors: dict[str, float] = field(default_factory=dict)
    region: Region | None = None

    @classmethod
    def of(cls, candidate: Candidate, score: float | None = None, **factors: float) -> Scored:
        """A ranked region from a unit's candidate (its score, or ``score``), with more factors."""
        value = candidate.score if score is None else float(score)
        return cls(candidate.case_id, value, {**candidate.factors, **factors}, candidate.region)


REGISTRY: dict[str, type[Strategy]] = {}


class Strategy:
    """Base class: rank the unlabeled cases of a round.

    Subclasses set ``name`` (registers them), ``schedule`` (``sequential``: one case every
    stride epochs; ``one_off``: the whole budget at epoch 0 with the source model), ``needs``
    (a subset of :data:`NEEDS`), ``per_case``, optionally ``display_name``/``table_order`` (the
    benchmark tables) and ``source_callback`` (the callback of the SOURCE training that saves
    what :meth:`load_source_artifacts` reads), and implement :meth:`score`. Constructor
    arguments are the strategy's options (typed: ``--help`` shows and validates them).
    """

    name: ClassVar[str] = ""
    #: name in the benchmark tables (default: ``name``)
    display_name: ClassVar[str] = ""
    #: position in the benchmark tables (lower first; the bounds come before every strategy)
    table_order: ClassVar[int] = 100
    schedule: ClassVar[Literal["sequential", "one_off"]] = "sequential"
    needs: ClassVar[frozenset[str]] = frozenset()
    #: a case's score does not depend on which other cases are scored with it, so DDP ranks
    #: may each score a shard of the pool (pool-level inputs like density may still be used;
    #: decisions over the whole pool go in :meth:`finalize`)
    per_case: ClassVar[bool] = False
    #: Lightning callback class to add to the SOURCE training (None: the strategy needs nothing
    #: from it); its output travels with the source checkpoint
    source_callback: ClassVar[type | None] = None
    #: the annotation units (:mod:`lightning_ada.active.units`) the strategy can rank: a
    #: case-level strategy ranks whole cases (:meth:`score`); a region rule implements
    #: :meth:`case_regions` and lists the units it ranks
    units: ClassVar[frozenset[str]] = frozenset({"case"})
    #: the strategy reads what an annotator is asked for (the reference labels of the pool):
    #: a simulation's upper reference, never offered where real annotators work
    simulation_only: ClassVar[bool] = False

    #: seconds spent in the last :meth:`score` call, by part (inference, statistics, density)
    timings: dict[str, float] = {}  # noqa: RUF012 - replaced per call, never mutated
    #: set by :meth:`configure_run`
    run: RunInfo = RunInfo()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ or not cls.name:
            return  # an abstract helper or a subclass that keeps its parent's registration
        unknown = set(cls.needs) - NEEDS
        if unknown:
            raise TypeError(f"strategy {cls.name!r} needs unknown {sorted(unknown)}; known: {sorted(NEEDS)}")
        if "display_name" not in cls.__dict__:
            cls.display_name = cls.name
        old = REGISTRY.get(cls.name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(
                f"strategy name {cls.name!r} of {cls.__module__}.{cls.__qualname__} is already "
                f"taken by {old.__module__}.{old.__qualname__}"
            )
        REGISTRY[cls.name] = cls

    # ------------------------------------------------------------------ run set-up
    def configure_run(self, run: RunInfo) -> None:
        """Receive the run's budget and progress setting (called once, before any query)."""
        self.run = run

    @property
    def budget(self) -> int:
        """Cases the run will label."""
        return self.run.budget

    @property
    def progress(self) -> bool:
        """Show progress bars while scoring."""
        return self.run.progress

    def load_source_artifacts(self, checkpoint: Mapping[str, Any], path: str) -> None:
        """Read what ``source_callback`` saved in the source checkpoint ``path`` (default: no-op).

        Raises:
            ValueError: the checkpoint lacks them (name the callback to add to the source run).
        """

    # ------------------------------------------------------------------ ranking
    def score(self, ctx: QueryContext) -> list[Scored]:
        """Score every case of ``ctx.unlabeled``."""
        raise NotImplementedError

    def finalize(self, scored: list[Scored]) -> list[Scored]:
        """Decisions over the scores of the whole pool (after a DDP gather); default: none."""
        return scored

    def rank(self, ctx: QueryContext) -> list[Scored]:
        """Scores sorted best first; ties broken by case id (deterministic across ranks)."""
        return self.sort(self.finalize(self.score(ctx)), ctx.unlabeled)

    def sort(self, scored: list[Scored], unlabeled: Sequence[str]) -> list[Scored]:
        """Check that ``scored`` covers exactly ``unlabeled``; sort best first, ties by case id."""
        if sorted(s.case_id for s in scored) != sorted(unlabeled):
            raise RuntimeError(f"strategy {self.name!r} must score exactly the unlabeled cases")
        return sorted(scored, key=lambda s: (-s.score, s.case_id))

    # ------------------------------------------------------------------ regions
    @property
    def region_level(self) -> bool:
        """Whether the strategy ranks regions (:meth:`case_regions`) rather than whole cases."""
        return type(self).case_regions is not Strategy.case_regions

    def prepare_round(self, ctx: QueryContext) -> None:
        """Pool-level work a region rule does once per round before :meth:`case_regions`
        (e.g. a density over the pool); default: none."""

    def case_regions(
        self, ctx: QueryContext, unit: AnnotationUnit, case_id: str, axis: int | None = None
    ) -> list[Scored]:
        """Score the candidate regions of one case (region rules; one inference pass per case).

        Args:
            ctx: the round's context.
            unit: the run's annotation unit (``unit.candidates`` cuts the case).
            case_id: the case.
            axis: the slice axis to cut along instead of the unit's (the elected modality's
                plane).
        """
        raise NotImplementedError

    def rank_regions(self, ctx: QueryContext, unit: AnnotationUnit) -> list[Scored]:
        """Every candidate region of ``ctx.candidates``, best first (ties by case id, then by
        region); a region rule's ranking of one round."""
        self.prepare_round(ctx)
        scored = [s for cid in ctx.candidates for s in self.case_regions(ctx, unit, cid)]
        return sorted(scored, key=lambda s: (-s.score, s.case_id, repr(s.region)))

    def state_dict(self) -> dict[str, Any]:
        """Caches to keep across a resume (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def in_order(order: Sequence[str], factors: Callable[[str], dict[str, float]]) -> list[Scored]:
    """Scores for a selection made by order (one-off and greedy strategies).

    The i-th of ``order`` gets score ``len(order) - i`` (strictly decreasing, so ``rank()[:B]``
    is the selection); the raw criteria go in ``factors(case_id)``.
    """
    n = len(order)
    return [Scored(cid, float(n - i), factors(cid)) for i, cid in enumerate(order)]


def strategy_class(name: str) -> type[Strategy]:
    """The class registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; known strategies: {sorted(REGISTRY)}")
    return REGISTRY[name]


def build_strategy(
    name: str, *, budget: int = 1, progress: bool = False, **init_args: Any
) -> Strategy:
    """Instantiate the strategy registered as ``name`` and configure it for a run.

    Args:
        name: registry name.
        budget, progress: the :class:`RunInfo` handed to :meth:`Strategy.configure_run`.
        init_args: the strategy's own options.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    strategy = strategy_class(name)(**init_args)
    strategy.configure_run(RunInfo(budget=budget, progress=progress))
    return strategy
