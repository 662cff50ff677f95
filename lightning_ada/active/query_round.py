"""One query round: rank the unlabeled pool and elect the modality of the picks
(:func:`query_round`), then ask the oracle and record what it delivered (:func:`ask_oracle`).

:func:`query_round` is the round of :class:`~lightning_ada.active.callback.ActiveQueryCallback`
(during ``fit``) and of ``lightning-ada query`` (ranking only). Every rank of a DDP run calls
both; the ranking, the elections and the oracle's answers are broadcast from rank 0, and only
rank 0 asks the oracle.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as L
import torch

from lightning_ada.active.density import raw_case_image
from lightning_ada.active.election import elect_modality
from lightning_ada.active.open_set_filter import FilterResult, PrototypeFilter
from lightning_ada.active.oracles import Answer, Oracle, Request
from lightning_ada.active.strategies import QueryContext, Scored, Strategy
from lightning_ada.active.units import AnnotationUnit
from lightning_ada.data.pool_view import PoolView

#: why the annotator is asked for the elected modality (recorded with each query)
ELECTION_WHY = (
    "elected modality: best Dice of its single-modality prediction against the all-modality "
    "pseudo-label"
)


def query_context(
    pool: PoolView,
    module: Any,
    round: int = 0,
    seed: int = 0,
    run_dir: Any = None,
    with_features: bool = True,
    exclude: Sequence[str] = (),
    unit: AnnotationUnit | None = None,
) -> QueryContext:
    """What a strategy sees of the pool and the current model for one query round.

    Args:
        pool: the pool view.
        module: the model (``predict_case``, ``case_features``, ``regions``).
        round: 0-based query round.
        seed: the strategies' seed.
        run_dir: folder for caches.
        with_features: offer ``ctx.features`` (the net gives decoder features).
        exclude: unlabeled ids never to rank again (cases the oracle refused).
        unit: the annotation unit when a region rule ranks the round (None: whole cases ranked
            by a case-level strategy); the candidates are then every pool case not refused
            with a voxel still unannotated.
    """
    refused = set(exclude)
    candidates: list[str] = []
    if unit is not None:
        for cid in pool.ids("pool"):
            done = pool.annotated(cid)
            if cid not in refused and (done is None or not bool(done.all())):
                candidates.append(cid)
    return QueryContext(
        unlabeled=[c for c in pool.unlabeled() if c not in refused],
        pool=pool.ids("pool"),
        labeled=pool.labeled(),
        image=pool.image,
        predict=lambda img: module.predict_case(img, with_embedding=True),
        modalities=list(pool.modalities),
        regions=module.regions,
        round=round,
        seed=seed,
        run_dir=run_dir,
        source=pool.ids("source"),
        features=getattr(module, "case_features", None) if with_features else None,
        raw_image=lambda case_id: raw_case_image(pool.case(case_id)),
        unit=unit,
        candidates=candidates,
        annotated=pool.annotated,
        reference=pool.reference,
    )


def sharded_rank(strategy: Strategy, ctx: QueryContext, trainer: L.Trainer) -> list[Scored]:
    """Rank the pool; under DDP, per-case strategies score a shard per rank and gather.

    Strategies whose score of a case does not depend on the other cases (``per_case``) split the
    unlabeled ids over the ranks, each scores its shard, and every rank gathers all scores and
    applies the strategy's pool-wide :meth:`~Strategy.finalize` to the whole gathered list; the
    others are computed whole on every rank. Either way every rank ends with the ranking a single
    process would make.
    """
    world = trainer.world_size
    if world > 1 and strategy.per_case and torch.distributed.is_initialized():
        shard = sorted(ctx.unlabeled)[trainer.global_rank :: world]
        local = strategy.score(dataclasses.replace(ctx, unlabeled=shard))
        gathered: list[list[Scored]] = [[] for _ in range(world)]
        torch.distributed.all_gather_object(gathered, local)
        scored = [s for part in gathered for s in part]
        return strategy.sort(strategy.finalize(scored), ctx.unlabeled)
    return strategy.rank(ctx)


@dataclass
class Election:
    """How the modality of a queried case is elected (None in :func:`query_round`: not elected).

    Attributes:
        predict: image ``(C, H, W, D)`` -> probabilities ``(K, H, W, D)``.
        per_class: compare by the mean Dice over foreground classes.
    """

    predict: Callable[[torch.Tensor], torch.Tensor]
    per_class: bool = False


@dataclass
class RoundResult:
    """What one round did.

    Attributes:
        ranked: the whole ranking (best first).
        picks: one entry per pick, in rank order (what the oracle is to be asked).
        filtered: the open-set pre-filter's candidates and distances (None: no pre-filter).
    """

    ranked: list[Scored]
    picks: list[dict[str, Any]] = field(default_factory=list)
    #: the open-set pre-filter's decision (None: no pre-filter)
    filtered: FilterResult | None = None


def query_round(
    strategy: Strategy,
    ctx: QueryContext,
    n: int,
    trainer: L.Trainer,
    pool: PoolView,
    *,
    election: Election | None = None,
    epoch: int = -1,
    prefilter: PrototypeFilter | None = None,
    allowance: int | None = None,
    round_size: int | None = None,
) -> RoundResult:
    """Rank the pool and elect a modality for the picks: the best ``n`` cases, or, with a
    region unit (``ctx.unit``), the best regions until ``allowance`` voxels are spent.

    Args:
        strategy: the configured strategy.
        ctx: the round's context (:func:`query_context`).
        n: cases to query (``len(ctx.unlabeled)``: every case, as ``lightning-ada query``); with
            a region rule on the ``case`` unit, regions (whole cases) to query.
        trainer: the trainer (world size, rank, broadcast).
        pool: the pool view (case records).
        election: elect the modality of each picked case (None: no election).
        epoch: the epoch after which the round runs (-1: before training).
        prefilter: OpenPath's open-set pre-filter: the strategy ranks only its candidates
            (and picks among them unless its ``sampling`` is ``egss`` or ``kmeans``).
        allowance: region units: the voxels the round may ask for (regions are taken in rank
            order while they fit; None: ``n`` regions).
        round_size: the cases a round of ``fit`` queries, for the pre-filter's candidates (at
            least that many); None: ``n``. ``lightning-ada query`` ranks every candidate
            (``n`` = the pool) of the round ``fit`` would make next.

    Returns:
        The ranking and the entries (one per pick: round, epoch, case, region, rank, score,
        factors, elected modality and its Dice, timings, pool size, case metadata).
    """
    t0 = time.perf_counter()
    n_pool, filtered = len(ctx.candidates if ctx.unit is not None else ctx.unlabeled), None
    if prefilter is not None:
        filtered = prefilter.candidates(ctx, n if round_size is None else round_size)
        ctx = dataclasses.replace(ctx, unlabeled=filtered.candidates, candidates=[
            c for c in ctx.candidates if c in set(filtered.candidates)])
    regions = ctx.unit is not None and strategy.region_level
    if regions:
        ranked = strategy.rank_regions(ctx, ctx.unit)  # type: ignore[arg-type]
        top = pick_regions(ranked, ctx, n, allowance)
    else:
        ranked = sharded_rank(strategy, ctx, trainer)
        top = ranked[:n]
        if filtered is not None and prefilter.sampling != "strategy":
            by_id = {s.case_id: s for s in ranked}
            ids = prefilter.pick(filtered, list(by_id), min(n, len(by_id)), ctx.rng(), ctx.seed)
            top = [by_id[c] for c in ids]
    seconds = time.perf_counter() - t0
    picks: list[Scored] = trainer.strategy.broadcast(top, src=0)
    entries, elected = [], {}
    for rank, pick in enumerate(picks):
        modality, dice = None, None
        if election is not None:
            if pick.case_id not in elected:
                result = elect_modality(ctx.image(pick.case_id), election.predict, ctx.modalities,
                                        multiclass=election.per_class,
                                        exclude=pool.case(pick.case_id).missing)
                elected[pick.case_id] = trainer.strategy.broadcast(
                    (result.modality, dict(result.dice)), src=0)
            modality, dice = elected[pick.case_id]
            if regions:
                pick = in_plane_of(strategy, ctx, pick, modality, picks[:rank])
        entry = {
            "round": ctx.round,
            "epoch": epoch,
            "case_id": pick.case_id,
            "rank": rank,
            "score": pick.score,
            "factors": pick.factors | (filtered.factors(pick.case_id) if filtered else {}),
            "modality": modality,
            "election_dice": dice,
            "why": ELECTION_WHY if dice else "",
            "strategy": strategy.name or type(strategy).__name__,
            "scoring_seconds": seconds,
            "timings": dict(strategy.timings),
            "pool_size": n_pool,
            "candidates": len(ranked),
            "case_meta": dict(pool.case(pick.case_id).meta),
        }
        if pool.case(pick.case_id).missing:  # zero-filled (data.missing_modality zero_fill)
            entry["missing_modalities"] = list(pool.case(pick.case_id).missing)
        if regions:
            part = sum(1 for e in entries if e["case_id"] == pick.case_id)
            entry |= {"region": pick.region.to_json(), "part": part}  # type: ignore[union-attr]
        entries.append(entry)
    return RoundResult(ranked, entries, filtered)


def pick_regions(
    ranked: Sequence[Scored], ctx: QueryContext, n: int, allowance: int | None
) -> list[Scored]:
    """The round's regions: in rank order, each one that fits the voxel ``allowance`` (or the
    first ``n`` without one) and does not overlap a region picked before it."""
    picked: list[Scored] = []
    spent = 0
    masks: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for s in ranked:
        if allowance is None and len(picked) >= n:
            break
        if s.case_id not in shapes:  # read each case's grid once, not once per candidate
            shapes[s.case_id] = tuple(ctx.image(s.case_id).shape[1:])
        shape = shapes[s.case_id]
        region = s.region
        assert region is not None
        voxels = region.voxels(shape)
        if allowance is not None and spent + voxels > allowance:
            continue
        mask = region.mask(shape)
        if s.case_id in masks and bool((masks[s.case_id] & mask).any()):
            continue
        masks[s.case_id] = masks.get(s.case_id, torch.zeros_like(mask)) | mask
        picked.append(s)
        spent += voxels
    return picked


def in_plane_of(
    strategy: Strategy, ctx: QueryContext, pick: Scored, modality: str | None,
    before: Sequence[Scored],
) -> Scored:
    """``pick`` cut again along the elected modality's slice axis when the unit maps that
    modality to another plane (the best region of that case there not overlapping ``before``);
    else ``pick`` unchanged."""
    axis_for = getattr(ctx.unit, "axis_for", None)
    region = pick.region
    if axis_for is None or region is None or region.kind != "slices":
        return pick
    axis = axis_for(modality)
    if axis == region.axis:
        return pick
    shape = tuple(ctx.image(pick.case_id).shape[1:])
    taken = torch.zeros(shape, dtype=torch.bool)
    for b in before:
        if b.case_id == pick.case_id and b.region is not None:
            taken |= b.region.mask(shape)
    for other in sorted(strategy.case_regions(ctx, ctx.unit, pick.case_id, axis=axis),  # type: ignore[arg-type]
                        key=lambda s: -s.score):
        mask = other.region.mask(shape)  # type: ignore[union-attr]
        if not bool((taken & mask).any()):
            return Scored(other.case_id, other.score, other.factors | {"replaned": 1.0}, other.region)
    return pick


@dataclass
class Asked:
    """What the oracle answered for a list of entries, asked in order.

    Attributes:
        delivered: entries answered (delivered or refused), each with ``label_path``,
            ``n_labeled`` and what the delivery ``added`` (``PoolView.label``; refused ones
            with ``refused`` and ``refused_reason`` instead), in order.
        pending: the entries from the first one still waiting for its label, in order.
        waiting: the oracle's answer for the first pending entry (None: nothing pending).
    """

    delivered: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    waiting: Answer | None = None


def ask_oracle(
    entries: list[dict[str, Any]],
    oracle: Oracle,
    trainer: L.Trainer,
    pool: PoolView,
    request_for: Callable[[dict[str, Any]], Request],
) -> Asked:
    """Ask the oracle for each entry in order, recording each delivered mask in the pool.

    Stops at the first entry the oracle is still waiting for (pending or timed out).

    Args:
        entries: the queries (:attr:`RoundResult.picks`, or a resumed run's pending ones).
        oracle: who delivers the masks.
        trainer: the trainer (rank, broadcast).
        pool: the pool view (delivered labels are recorded in it).
        request_for: builds the :class:`Request` of an entry (called on rank 0 only).
    """
    asked = Asked()
    for i, entry in enumerate(entries):
        answer = oracle.ask(request_for(entry)) if trainer.is_global_zero else None
        answer = trainer.strategy.broadcast(answer, src=0)
        if answer.waiting:
            asked.pending, asked.waiting = list(entries[i:]), answer
            return asked
        if answer.status == "refused":  # spent, not trained on
            spent = {"label_path": None, "refused": True, "refused_reason": answer.reason,
                     "n_labeled": len(pool.labeled())}
            asked.delivered.append(entry | spent)
            continue
        added = pool.label(entry["case_id"], answer.label_path, entry["modality"],
                           round=entry["round"], epoch=entry["epoch"], region=answer.region)
        notes = {"oracle": dict(answer.details)} if answer.details else {}
        asked.delivered.append(entry | {"label_path": answer.label_path, "added": added,
                                        "n_labeled": len(pool.labeled()), **notes})
    return asked
