"""The strategy protocol, what strategies receive, and the name -> class registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

Predict = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


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
            "decoder": (F, H, W, D)}`` in one pass of the current model (None if unavailable).
        source_artifacts: what was saved with the source checkpoint for source-free strategies
            (e.g. STDR anchors), by name.
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
    source_artifacts: dict[str, Any] = field(default_factory=dict)

    def rng(self) -> np.random.Generator:
        """A generator seeded by ``(seed, round)``: identical on every rank and on resume."""
        return np.random.default_rng([self.seed, self.round])


@dataclass(frozen=True)
class Scored:
    """One ranked case: its score (higher = query first) and the factors that made it."""

    case_id: str
    score: float
    factors: dict[str, float] = field(default_factory=dict)


class Strategy:
    """Base class: rank the unlabeled cases of a round.

    Subclasses set ``name``, ``schedule`` (``sequential``: one case every stride epochs;
    ``one_off``: the whole budget at epoch 0 with the source model), ``needs``
    (e.g. ``{"source"}``) and ``per_case``, and implement :meth:`score`.
    """

    name: ClassVar[str] = ""
    schedule: ClassVar[Literal["sequential", "one_off"]] = "sequential"
    needs: ClassVar[frozenset[str]] = frozenset()
    #: a case's score does not depend on which other cases are scored with it, so DDP ranks
    #: may each score a shard of the pool (pool-level inputs like density may still be used)
    per_case: ClassVar[bool] = False

    #: seconds spent in the last :meth:`score` call, by part (inference, statistics, density)
    timings: dict[str, float] = {}  # noqa: RUF012 - replaced per call, never mutated

    def score(self, ctx: QueryContext) -> list[Scored]:
        """Score every case of ``ctx.unlabeled``."""
        raise NotImplementedError

    def rank(self, ctx: QueryContext) -> list[Scored]:
        """Scores sorted best first; ties broken by case id (deterministic across ranks)."""
        scored = self.score(ctx)
        if {s.case_id for s in scored} != set(ctx.unlabeled):
            raise RuntimeError(f"strategy {self.name!r} must score exactly the unlabeled cases")
        return sorted(scored, key=lambda s: (-s.score, s.case_id))

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


REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator adding a strategy to the registry under ``cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def build_strategy(name: str, **kwargs: Any) -> Strategy:
    """Instantiate the strategy registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; known strategies: {sorted(REGISTRY)}")
    return REGISTRY[name](**kwargs)
