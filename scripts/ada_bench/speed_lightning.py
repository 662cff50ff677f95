"""Lightning's overhead: training voxels/s of ``SegmentationModule`` under ``Trainer`` vs a plain
PyTorch loop with the same net, loss, optimiser, poly schedule, DataLoader and batch.

Both loops start from the same initial weights and iterate the same DataLoader of one fixed
random batch (so data loading costs the same and is negligible). Throughput is measured over the
steps after ``warmup`` (callback timestamps under the Trainer, ``perf_counter`` in the loop), so
the Trainer's one-off setup is reported separately as ``startup_s``.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class _FixedBatch(Dataset):
    """``length`` copies of one (image, label) sample."""

    def __init__(self, image: torch.Tensor, label: torch.Tensor, length: int) -> None:
        self.image, self.label, self.length = image, label, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.image, "label": self.label}


def _loader(batch: int, size: int, steps: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(4, size, size, size, generator=g)
    label = torch.randint(0, 4, (1, size, size, size), generator=g).float()
    return DataLoader(_FixedBatch(image, label, batch * steps), batch_size=batch, shuffle=False)


def _module(size: int, seed: int = 0) -> Any:
    from lightning_ada.models.module import SegmentationModule

    torch.manual_seed(seed)
    return SegmentationModule(roi_size=[size] * 3, lr=3e-3)


def plain_loop(module: Any, loader: DataLoader, warmup: int) -> tuple[float, int]:
    """Seconds and steps after ``warmup`` of a hand-written loop (Adam + poly LR per step)."""
    hp = module.hparams
    opt = torch.optim.Adam(module.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    total = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: max(0.0, 1 - s / total) ** hp.poly_power
    )
    module.train()
    t0, n = 0.0, 0
    for step, batch in enumerate(loader):
        if step == warmup:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = module.loss(module(batch["image"]), batch["label"])
        loss.backward()
        opt.step()
        sched.step()
        n += step >= warmup
    return time.perf_counter() - t0, n


def trainer_loop(module: Any, loader: DataLoader, warmup: int) -> tuple[float, int, float]:
    """Seconds and steps after ``warmup`` under ``Trainer.fit``, plus the whole fit's seconds."""
    import lightning.pytorch as L

    marks: dict[str, float] = {}

    class Clock(L.Callback):
        def on_train_batch_start(
            self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
        ) -> None:
            if trainer.global_step == warmup and "start" not in marks:
                marks["start"] = time.perf_counter()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            marks["end"] = time.perf_counter()

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Clock()],
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    whole = time.perf_counter() - t0
    return marks["end"] - marks["start"], len(loader) - warmup, whole


def compare(
    size: int = 32, batch: int = 2, steps: int = 30, warmup: int = 5, repeats: int = 3
) -> dict[str, Any]:
    """Interleaved repeats of both loops; medians of voxels/s and their ratio (Trainer / plain)."""
    import statistics

    base = _module(size)
    plain, light, startup = [], [], []
    voxels = batch * size**3
    for r in range(repeats):
        for kind in ("plain", "trainer") if r % 2 == 0 else ("trainer", "plain"):
            module = copy.deepcopy(base)
            loader = _loader(batch, size, steps)
            if kind == "plain":
                sec, n = plain_loop(module, loader, warmup)
                plain.append(voxels * n / sec)
            else:
                sec, n, whole = trainer_loop(module, loader, warmup)
                light.append(voxels * n / sec)
                startup.append(whole - sec)
    p, t = statistics.median(plain), statistics.median(light)
    return {
        "size": size,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "plain_vox_s": p,
        "trainer_vox_s": t,
        "ratio": t / p,
        "plain_all": plain,
        "trainer_all": light,
        "trainer_startup_s": statistics.median(startup),
    }
