"""Sparse fine-tuning: DGST's top-k entries per filter, or norm-and-bias only (ALGORITHMS 10).

A Lightning callback, off unless listed in ``trainer.callbacks``::

    trainer:
      callbacks:
        - class_path: lightning_ada.models.sparse_finetune.SparseFineTuning
          init_args: {mode: dgst, n_keep: 2}

It masks the *update*, not only the gradient: just before each optimiser step (after
back-propagation, in ``on_before_optimizer_step``) it picks, for every convolution / linear weight
outside the segmentation head, the ``n_keep`` entries of each output filter with the largest
``|grad|`` and records the weights and the optimiser's per-entry state (SGD momentum, Adam
moments); right after the step (a step post-hook on the optimiser) it puts back every entry that
was not picked, in the weight and in that state. So momentum and weight decay move nothing else,
this step or later, and the picked entries get exactly the update the plain optimiser gives them.
Norm layers, biases, the head and any other parameter stay fully trainable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.hooks import RemovableHandle

#: modules whose ``weight`` is sparsified (``ConvTranspose*`` store filters along dim 1)
SPARSE_MODULES = (nn.modules.conv._ConvNd, nn.Linear)
#: normalisation layers, trained in every mode
NORM_MODULES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def top_k_per_filter(grad: torch.Tensor, k: int, filter_dim: int = 0) -> torch.Tensor:
    """Boolean mask of the ``k`` largest-``|grad|`` entries of each output filter.

    Args:
        grad: gradient of a weight, e.g. ``(O, I, kH, kW, kD)`` for a convolution, ``(I, O, ...)``
            for a transposed one (``filter_dim=1``), ``(O, I)`` for a linear layer.
        k: entries kept per filter (all of them if ``k`` >= the filter's size; none if 0).
        filter_dim: dimension indexing the output filters.

    Returns:
        Mask of ``grad``'s shape with exactly ``min(k, filter size)`` True entries per filter
        (ties broken by ``torch.topk``).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    g = grad.detach().abs().movedim(filter_dim, 0)
    rows = g.reshape(g.shape[0], -1)
    if k >= rows.shape[1]:
        return torch.ones_like(grad, dtype=torch.bool)
    mask = torch.zeros_like(rows, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, rows.topk(k, dim=1).indices, True)
    return mask.reshape(g.shape).movedim(0, filter_dim)


def default_head(module: nn.Module) -> list[str]:
    """Names of the segmentation head: the last convolution / linear module in registration order
    (DynUNet ``net.output_block``, SegResNet ``net.conv_final``) and DynUNet's deep-supervision
    heads."""
    convs = [name for name, m in module.named_modules() if isinstance(m, SPARSE_MODULES)]
    if not convs:
        return []
    heads = {convs[-1]}
    heads.update(
        n
        for n, m in module.named_modules()
        if n.endswith("deep_supervision_heads") and any(True for _ in m.parameters())
    )
    return sorted(heads)


@dataclass
class _Plan:
    """How each parameter of the optimised module is treated."""

    #: (parameter, dimension of its output filters): top-k per filter each step
    sparse: list[tuple[nn.Parameter, int]]
    #: parameters left unchanged by every step
    frozen: list[nn.Parameter]
    #: names of the head modules (fully trainable)
    head: list[str]
    #: parameter name by ``id``
    names: dict[int, str]


class SparseFineTuning(Callback):
    """Update only a few entries of each filter per step (DGST), or only norms and biases.

    Args:
        mode: ``dgst`` = each step only the ``n_keep`` largest-``|grad|`` entries per output
            filter of every convolution / linear weight change (the set is recomputed each step;
            DGST, ALGORITHMS 10); ``norm_bias`` = those weights never change, only normalisation
            parameters, biases and the head train (a common few-label baseline).
        n_keep: entries per output filter updated each step in ``dgst`` mode (DGST's 2).
        head: names of modules kept fully trainable (as in ``pl_module.named_modules()``, e.g.
            ``["net.output_block"]``); None = :func:`default_head`.
        train_head: False puts the head's convolution weights under the same rule as the rest.

    Notes:
        The picked entries get the plain optimiser update (weight decay, momentum and clipping
        included). A non-picked entry keeps its weight and its optimiser state (momentum buffer,
        Adam moments) bit for bit; state created by the very step (first step) is set to zero
        there. Adam's per-tensor step counter is not per entry and advances as usual. Transposed
        convolutions are assumed to have ``groups=1``.
    """

    def __init__(
        self,
        mode: Literal["dgst", "norm_bias"] = "dgst",
        n_keep: int = 2,
        head: Sequence[str] | None = None,
        train_head: bool = True,
    ) -> None:
        if mode not in ("dgst", "norm_bias"):
            raise ValueError(f"mode must be 'dgst' or 'norm_bias', got {mode!r}")
        if n_keep < 1:
            raise ValueError(f"n_keep must be >= 1, got {n_keep}")
        self.mode = mode
        self.n_keep = int(n_keep)
        self.head = None if head is None else [str(h) for h in head]
        self.train_head = bool(train_head)
        self._plans: dict[int, _Plan] = {}
        self._pending: dict[
            int,
            list[tuple[nn.Parameter, torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]],
        ] = {}
        #: hooked optimisers (held, so that their ids are not reused) and their step post-hooks
        self._hooks: dict[int, tuple[torch.optim.Optimizer, RemovableHandle]] = {}
        #: masks of the last step by parameter name (``None`` = frozen), for inspection and tests
        self.last_masks: dict[str, torch.Tensor | None] = {}

    # ------------------------------------------------------------------ which parameters
    def plan(self, module: nn.Module) -> _Plan:
        """Sort the parameters of ``module`` into sparse, frozen and trainable (cached)."""
        key = id(module)
        if key in self._plans:
            return self._plans[key]
        names = dict(module.named_modules())
        head = default_head(module) if self.head is None else list(self.head)
        unknown = [h for h in head if h not in names]
        if unknown:
            raise ValueError(
                f"SparseFineTuning: head modules {unknown} not found in {type(module).__name__}"
            )
        head_prefixes = tuple(f"{h}." for h in head) if self.train_head else ()
        norm_params = {
            id(p)
            for m in module.modules()
            if isinstance(m, NORM_MODULES)
            for p in m.parameters(recurse=False)
        }
        sparse: list[tuple[nn.Parameter, int]] = []
        frozen: list[nn.Parameter] = []
        for mod_name, mod in names.items():
            weight = getattr(mod, "weight", None)
            if not isinstance(mod, SPARSE_MODULES) or not isinstance(weight, nn.Parameter):
                continue
            if f"{mod_name}.".startswith(head_prefixes):
                continue  # the head (head_prefixes is empty when train_head is False)
            if self.mode == "dgst":
                sparse.append(
                    (weight, 1 if isinstance(mod, nn.modules.conv._ConvTransposeNd) else 0)
                )
        if self.mode == "norm_bias":
            for name, p in module.named_parameters():
                trainable = (
                    id(p) in norm_params
                    or name.endswith("bias")
                    or (head_prefixes and name.startswith(head_prefixes))
                )
                if not trainable:
                    frozen.append(p)
        names_by_id = {id(p): n for n, p in module.named_parameters()}
        self._plans[key] = _Plan(sparse=sparse, frozen=frozen, head=head, names=names_by_id)
        return self._plans[key]

    # ------------------------------------------------------------------ hooks
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Pick the entries to update and record everything else (gradients are final here)."""
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer's wrapped one
        plan = self.plan(pl_module)
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        todo: list[tuple[nn.Parameter, torch.Tensor | None]] = []
        for p, filter_dim in plan.sparse:
            if id(p) in owned and p.grad is not None:
                todo.append((p, top_k_per_filter(p.grad, self.n_keep, filter_dim)))
        todo += [(p, None) for p in plan.frozen if id(p) in owned and p.grad is not None]
        pending = []
        self.last_masks = {}
        with torch.no_grad():
            for p, keep in todo:
                state = optimizer.state.get(p, {})
                saved = {k: v.detach().clone() for k, v in state.items() if _per_entry(v, p)}
                pending.append((p, keep, p.detach().clone(), saved))
                self.last_masks[plan.names.get(id(p), str(id(p)))] = keep
        self._pending[id(optimizer)] = pending
        if id(optimizer) not in self._hooks:
            handle = optimizer.register_step_post_hook(self._restore)
            self._hooks[id(optimizer)] = (optimizer, handle)

    def _restore(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """After the step: put back every entry that was not picked (weight and optimiser state)."""
        pending = self._pending.pop(id(optimizer), None)
        if not pending:
            return
        with torch.no_grad():
            for p, keep, old, saved in pending:
                p.copy_(old if keep is None else torch.where(keep, p, old))
                for k, v in optimizer.state.get(p, {}).items():
                    if not _per_entry(v, p):
                        continue
                    before = saved.get(k, torch.zeros_like(v))  # state born in this step: 0
                    v.copy_(before if keep is None else torch.where(keep, v, before))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for _, handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self._pending.clear()
        self._plans.clear()


def _per_entry(value: Any, param: torch.Tensor) -> bool:
    """Is this optimiser state tensor one value per entry of ``param``?"""
    return (
        isinstance(value, torch.Tensor) and value.shape == param.shape and value.is_floating_point()
    )
