"""Sparse fine-tuning (DGST, ALGORITHMS 10): only the picked entries of each filter move."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from lightning_ada.models.module import SegmentationModule
from lightning_ada.models.nets import build_net
from lightning_ada.models.sparse_finetune import SparseFineTuning, default_head, top_k_per_filter

LABELS = {"a": 1, "b": 2}


def _module(**kwargs) -> SegmentationModule:
    torch.manual_seed(0)
    return SegmentationModule(
        in_channels=2, labels=LABELS, filters=[4, 8, 8], optimizer="sgd", **kwargs
    )


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 16, 16, 16, generator=g)
    y = torch.randint(0, 3, (2, 1, 16, 16, 16), generator=g)
    return x, y


def _sgd(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        module.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2
    )


def _filter_dim(module: nn.Module, name: str) -> int:
    owner = module.get_submodule(name.rsplit(".", 1)[0])
    return 1 if isinstance(owner, nn.modules.conv._ConvTransposeNd) else 0


def _changed_per_filter(after: torch.Tensor, before: torch.Tensor, filter_dim: int) -> torch.Tensor:
    changed = (after != before).movedim(filter_dim, 0)
    return changed.reshape(changed.shape[0], -1).sum(1)


def _categories(module: SegmentationModule) -> tuple[set[str], set[str]]:
    """(names of the sparsified conv weights, names of every fully trainable parameter)."""
    head = tuple(f"{h}." for h in default_head(module))
    convs = {
        f"{n}.weight"
        for n, m in module.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and not f"{n}.".startswith(head)
    }
    return convs, {n for n, _ in module.named_parameters()} - convs


def _step(module, opt, cb, seed):
    x, y = _batch(seed)
    opt.zero_grad()
    module.loss(module(x), y).backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    if cb is not None:
        cb.on_before_optimizer_step(None, module, opt)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    momentum = {
        n: opt.state[p]["momentum_buffer"].clone()
        for n, p in module.named_parameters()
        if p in opt.state
    }
    opt.step()
    return grads, before, momentum


def test_exactly_k_entries_per_filter_change_with_momentum_and_weight_decay() -> None:
    module = _module()
    plain = copy.deepcopy(module)
    opt, plain_opt = _sgd(module), _sgd(plain)
    cb = SparseFineTuning(n_keep=2)
    convs, trainable = _categories(module)
    assert len(convs) > 10 and any("transp_conv" in n for n in convs)
    assert any("output_block" in n for n in trainable) and any("norm" in n for n in trainable)
    initial = {n: p.detach().clone() for n, p in module.named_parameters()}
    for step in range(4):
        grads, before, momentum = _step(module, opt, cb, seed=step)
        params = dict(module.named_parameters())
        if step == 0:  # from the same start, everything the rule allows equals a plain step
            _step(plain, plain_opt, None, seed=0)
            reference = dict(plain.named_parameters())
        for name in convs:
            fd = _filter_dim(module, name)
            counts = _changed_per_filter(params[name], before[name], fd)
            assert (counts == 2).all(), (step, name, counts)
            picked = top_k_per_filter(grads[name], 2, fd)
            assert torch.equal(params[name] != before[name], picked)
            if name in momentum:  # momentum of the entries not picked does not move (no leak)
                buf = opt.state[params[name]]["momentum_buffer"]
                assert torch.equal(buf[~picked], momentum[name][~picked])
            elif step == 0:
                assert torch.equal(params[name][picked], reference[name][picked])
                assert (opt.state[params[name]]["momentum_buffer"][~picked] == 0).all()
        for name in trainable:  # norms, biases and the head: every entry moves
            assert (params[name] != before[name]).all(), (step, name)
            if step == 0:
                assert torch.equal(params[name], reference[name])
    # the control: the plain step moved every entry of every conv weight
    for name in convs:
        assert (reference[name] != initial[name]).all(), name


def test_masking_only_the_gradient_would_leak() -> None:
    """The control that shows the test above can fail: zeroed gradients still move weights."""
    module = _module()
    opt = _sgd(module)
    convs, _ = _categories(module)
    leaked = 0
    for step in range(2):
        x, y = _batch(step)
        opt.zero_grad()
        module.loss(module(x), y).backward()
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        for n, p in module.named_parameters():
            if n in convs:
                p.grad.mul_(top_k_per_filter(p.grad, 2, _filter_dim(module, n)))
        opt.step()
        params = dict(module.named_parameters())
        leaked += sum(
            int((_changed_per_filter(params[n], before[n], _filter_dim(module, n)) > 2).sum())
            for n in convs
        )
    assert leaked > 0


def test_adam_moments_of_unpicked_entries_stay() -> None:
    module = _module()
    opt = torch.optim.Adam(module.parameters(), lr=1e-2, weight_decay=1e-3)
    cb = SparseFineTuning(n_keep=1)
    convs, _ = _categories(module)
    for step in range(3):
        x, y = _batch(step)
        opt.zero_grad()
        module.loss(module(x), y).backward()
        cb.on_before_optimizer_step(None, module, opt)
        prev = {
            n: {k: v.clone() for k, v in opt.state[p].items()}
            for n, p in module.named_parameters()
            if p in opt.state
        }
        opt.step()
        for n, p in module.named_parameters():
            if n not in convs:
                continue
            keep = cb.last_masks[n]
            assert (
                int(
                    keep.movedim(_filter_dim(module, n), 0)
                    .reshape(keep.shape[_filter_dim(module, n)], -1)
                    .sum(1)
                    .max()
                )
                == 1
            )
            for k in ("exp_avg", "exp_avg_sq"):
                old = prev[n][k] if n in prev else torch.zeros_like(p)
                assert torch.equal(opt.state[p][k][~keep], old[~keep])


def test_norm_bias_mode_freezes_every_other_weight() -> None:
    module = _module()
    opt = _sgd(module)
    cb = SparseFineTuning(mode="norm_bias")
    frozen = [
        n
        for n, _ in module.named_parameters()
        if not (n.endswith("bias") or ".norm" in n or "output_block" in n)
    ]
    assert len(frozen) > 10
    for step in range(2):
        _, before, _ = _step(module, opt, cb, seed=step)
        params = dict(module.named_parameters())
        for name, value in params.items():
            if name in frozen:
                assert torch.equal(value, before[name]), name
            else:
                assert (value != before[name]).all(), name


def test_inside_a_lightning_fit_with_clipping() -> None:
    """The real hook order: closure, on_before_optimizer_step, clipping, step, post-hook."""

    class Recorder(L.Callback):
        def __init__(self) -> None:
            self.counts: list[dict[str, torch.Tensor]] = []
            self.trainable_moved: list[bool] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            convs, trainable = _categories(pl_module)
            params = dict(pl_module.named_parameters())
            self.counts.append(
                {  # (changed entries, entries) per filter
                    n: (
                        _changed_per_filter(params[n], self.before[n], _filter_dim(pl_module, n)),
                        params[n].numel() // params[n].shape[_filter_dim(pl_module, n)],
                    )
                    for n in convs
                }
            )
            self.trainable_moved.append(
                all(bool((params[n] != self.before[n]).any()) for n in trainable)
            )

    module = _module(lr=0.05, momentum=0.9, weight_decay=1e-2)
    data = [{"image": _batch(i)[0][0], "label": _batch(i)[1][0]} for i in range(6)]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    recorder = Recorder()
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=12.0,
        callbacks=[SparseFineTuning(n_keep=3), recorder],
    )
    trainer.fit(module, train_dataloaders=loader)
    assert len(recorder.counts) == 3
    for counts in recorder.counts:
        assert all((c == min(3, size)).all() for c, size in counts.values())
    assert any(size < 3 for _, size in recorder.counts[0].values())  # 1x1x1 conv of 2 channels
    assert all(recorder.trainable_moved)


def test_top_k_per_filter() -> None:
    g = torch.tensor([[0.1, -5.0, 2.0, 0.0], [3.0, 1.0, -4.0, 0.5]])
    assert torch.equal(
        top_k_per_filter(g, 2),
        torch.tensor([[False, True, True, False], [True, False, True, False]]),
    )
    assert top_k_per_filter(g, 9).all()
    t = torch.randn(3, 5, 2, 2, 2)  # a transposed conv weight: (in, out, k, k, k)
    m = top_k_per_filter(t, 2, filter_dim=1)
    assert m.shape == t.shape and (m.sum(dim=(0, 2, 3, 4)) == 2).all()
    with pytest.raises(ValueError):
        top_k_per_filter(g, -1)


@pytest.mark.parametrize(
    ("net", "head"), [("dynunet", "output_block.conv.conv"), ("segresnet", "conv_final.2.conv")]
)
def test_default_head_is_the_last_convolution(net: str, head: str) -> None:
    assert default_head(build_net(net, 2, 3, [8, 16, 16])) == [head]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_keep"):
        SparseFineTuning(n_keep=0)
    with pytest.raises(ValueError, match="mode"):
        SparseFineTuning(mode="lora")  # type: ignore[arg-type]
    module = _module()
    with pytest.raises(ValueError, match="not found"):
        SparseFineTuning(head=["net.nothing"]).plan(module)
