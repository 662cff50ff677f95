"""Where the wall time of one phantom target run goes.

Runs one target run in this (fresh) process through the library's runner, timing: process start
and imports, building the CLI objects (config, net, source weights), data set-up (phantom
generation, reading, validation, caching), every training step split into data loading (cache
read), augmentation and forward-backward-optimiser, validation, checkpoint writes, scoring
rounds, the final test, and what is left (Lightning's loop). Then, on one batch of that run,
the step time of a bare PyTorch loop, with ``channels_last_3d`` and with ``torch.compile``.

    # the current default benchmark target run (32^3, configs/phantom) and the power recipe
    python scripts/profile_run.py --preset phantom --out runs/profile/phantom.json
    python scripts/profile_run.py --preset power --out runs/profile/power.json
    # anything else: configs and overrides after "--"
    python scripts/profile_run.py -- -c configs/power/glioma/target.yaml --active.budget 3 ...
    # the step ratio measured interleaved: every 10 steps of the run, 5 bare steps on its batch
    python scripts/profile_run.py --preset power --no-compile --interleave 10 --out step.json

Needs the source model of the preset (a 2-epoch one is trained first when missing, not counted). Absolute
times depend on the machine's load: compare fractions, re-measure times on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

_T0 = time.perf_counter()  # before the heavy imports


def _process_age() -> float:
    """Seconds since this process started (Linux ``/proc``), else since this module loaded."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _T0


import ada_bench.runner  # noqa: E402,F401  (the harness and the library's imports: lightning, monai, ...)
import torch  # noqa: E402

import lightning_ada.main  # noqa: E402,F401

IMPORTED_AT = _process_age()

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

PRESETS: dict[str, dict[str, Any]] = {
    # the benchmark's default target run of earlier releases: 32^3, 24 epochs x 10 steps, validation
    # every 8 epochs, a checkpoint every epoch, random strategy at budget 3 (stride 4)
    "phantom": {
        "source": ["configs/phantom/base.yaml", "configs/phantom/glioma/source.yaml"],
        "source_overrides": [
            "--data.root", "data/phantom/profile_glioma_32",
            "--data.phantom", '{"task": "glioma", "size": 32, "seed": 0, "progress": false}',
            "--trainer.default_root_dir", "runs/profile/phantom_source",
            "--trainer.logger", "false",
        ],
        "target": ["configs/phantom/base.yaml", "configs/phantom/glioma/random.yaml"],
        "target_overrides": [
            "--data.root", "data/phantom/profile_glioma_32",
            "--data.phantom", '{"task": "glioma", "size": 32, "seed": 0, "progress": false}',
            "--model.source_checkpoint", "runs/profile/phantom_source/checkpoints/last.ckpt",
            "--trainer.default_root_dir", "runs/profile/phantom_target",
            "--trainer.logger", "false",
        ],
    },
    # the power recipe (configs/power/glioma), random strategy at budget 3
    "power": {
        "source": ["configs/power/glioma/source.yaml"],
        "source_overrides": [
            "--data.root", "data/phantom/profile_power_glioma_24",
            "--trainer.default_root_dir", "runs/profile/power_source",
        ],
        "target": ["configs/power/glioma/target.yaml"],
        "target_overrides": [
            "--data.root", "data/phantom/profile_power_glioma_24",
            "--model.source_checkpoint", "runs/profile/power_source/checkpoints/last.ckpt",
            "--trainer.default_root_dir", "runs/profile/power_target",
            "--active.strategy", "random", "--active.budget", "3",
        ],
    },
}
# the power run with the on-disk cache of preprocessed cases (run it twice: cold, then warm)
PRESETS["power_cached"] = {
    **PRESETS["power"],
    "target_overrides": [*PRESETS["power"]["target_overrides"],
                         "--data.cache_dir", "data/cache/profile_power"],
}


class Clock:
    """Accumulated seconds and counts per named part."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt
        self.count[name] = self.count.get(name, 0) + 1

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        """Time every call of ``obj.attr`` under ``name``."""
        fn = getattr(obj, attr)

        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(name, time.perf_counter() - t)

        setattr(obj, attr, timed)


def _step_callback(clock: Clock, batches: list[Any], steps: list[float]) -> Any:
    """A callback timing each training batch (forward, backward, optimiser step, hooks)."""
    import lightning.pytorch as L

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, i: int) -> None:
            if not batches:
                batches.append(batch)  # one batch of the run, for the bare loop
            self.t = time.perf_counter()

        def on_train_batch_end(self, *a: Any) -> None:
            dt = time.perf_counter() - self.t
            clock.add("train: forward-backward-optimiser", dt)
            steps.append(dt)

        def on_validation_start(self, *a: Any) -> None:
            self.v = time.perf_counter()

        def on_validation_end(self, *a: Any) -> None:
            clock.add("validation", time.perf_counter() - self.v)

    return StepTimer()


def _interleaver(every: int, block: int, batches: list[Any], steps: list[float],
                 blocks: list[dict[str, float]]) -> Any:
    """A callback that, after every ``every`` steps of the run, times ``block`` bare PyTorch
    steps on the run's first batch with a copy of the current net (:func:`bare_loop`), so the
    two loops are measured in the same minutes of the same process; torch's random state is
    restored after each block (the run draws what it would have drawn)."""
    import lightning.pytorch as L

    class Interleave(L.Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, *a: Any) -> None:
            if len(steps) % every or not batches:
                return
            state = torch.random.get_rng_state()
            bare = bare_loop(module, batches[0], block)
            torch.random.set_rng_state(state)
            blocks.append({"after_step": len(steps), "bare_step_seconds": bare["step_seconds"],
                           "run_step_seconds": sum(steps[-every:]) / every})

    return Interleave()


def interleaved_summary(blocks: list[dict[str, float]]) -> dict[str, float]:
    """Per block, the run's mean step over the steps before it / the bare step; the first block
    (the run's first steps: allocation, warm-up) is left out. Medians over the blocks."""
    import statistics

    kept = blocks[1:]
    ratios = [b["run_step_seconds"] / b["bare_step_seconds"] for b in kept]
    return {"blocks": len(kept),
            "median_ratio": statistics.median(ratios) if ratios else float("nan"),
            "median_run_step_seconds": statistics.median(b["run_step_seconds"] for b in kept) if kept else float("nan"),
            "median_bare_step_seconds": statistics.median(b["bare_step_seconds"] for b in kept) if kept else float("nan"),
            "ratio_min": min(ratios, default=float("nan")), "ratio_max": max(ratios, default=float("nan"))}


def profile_run(configs: list[str], overrides: list[str], interleave: int = 0,
                block: int = 5) -> dict[str, Any]:
    """Run one target run with every part timed; returns the breakdown and one training batch
    (``interleave``: bare steps timed every that many steps, :func:`_interleaver`)."""
    from lightning_ada.active.callback import ActiveQueryCallback
    from lightning_ada.data import epochs as dmod
    from lightning_ada.main import main

    clock = Clock()
    batches: list[Any] = []
    # data loading = reading the cached (or annotated) item; augmentation = the random chain
    original_getitem = dmod.LabeledEpoch.__getitem__

    def getitem(self: Any, i: int) -> Any:
        ids = self.labeled()
        t = time.perf_counter()
        item = self.labeled_item(ids[i % len(ids)]) if ids else None
        clock.add("train: data loading", time.perf_counter() - t)
        if item is None:
            return original_getitem(self, i)
        t = time.perf_counter()
        out = self.transform(item)
        clock.add("train: augmentation", time.perf_counter() - t)
        return out

    dmod.LabeledEpoch.__getitem__ = getitem  # type: ignore[method-assign]
    args: list[str] = []
    for c in configs:
        args += ["-c", c]
    argv, sys.argv = sys.argv, sys.argv[:1]
    t = time.perf_counter()
    try:
        cli = main([*args, *overrides, "--trainer.enable_progress_bar", "false"], run=False)
    finally:
        sys.argv = argv
    clock.add("build CLI objects (config, net, source weights)", time.perf_counter() - t)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    steps: list[float] = []
    blocks: list[dict[str, float]] = []
    trainer.callbacks.append(_step_callback(clock, batches, steps))
    if interleave:
        trainer.callbacks.append(_interleaver(interleave, block, batches, steps, blocks))
    clock.wrap(dm, "prepare_data", "data set-up: phantom generation")
    clock.wrap(dm, "setup", "data set-up: read, validate, cache")
    clock.wrap(trainer, "save_checkpoint", "checkpoint writes")
    for cb in trainer.callbacks:
        if isinstance(cb, ActiveQueryCallback):
            clock.wrap(cb, "_query", "scoring rounds (rank, elect, label)")
    t = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    clock.add("fit (total)", time.perf_counter() - t)
    t = time.perf_counter()
    trainer.test(model, datamodule=dm, verbose=False)
    clock.add("final test", time.perf_counter() - t)
    dmod.LabeledEpoch.__getitem__ = original_getitem  # type: ignore[method-assign]
    test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    return {"clock": clock, "model": model, "batch": batches[0], "test": test,
            "steps": int(trainer.global_step), "interleaved": blocks}


def bare_loop(model: Any, batch: dict[str, Any], steps: int, memory: str = "contiguous",
              compiled: bool = False) -> dict[str, float]:
    """Seconds per step of forward + Dice-CE loss + backward + Adam on one batch, plain PyTorch."""
    import copy

    net = copy.deepcopy(model.net).train()
    loss_fn = model.loss
    x, y = batch["image"].as_tensor().contiguous(), batch["label"].as_tensor().contiguous()
    if memory == "channels_last_3d":
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    fwd = torch.compile(net) if compiled else net
    t = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        opt.zero_grad(set_to_none=True)
        loss_fn(fwd(x), y).backward()
        opt.step()
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(fwd(x), y).backward()
        opt.step()
    return {"step_seconds": (time.perf_counter() - t) / steps, "warmup_seconds": warm}


def ensure_source(preset: dict[str, Any]) -> None:
    """Train the preset's source model if its checkpoint is missing (not part of the profile)."""
    i = preset["target_overrides"].index("--model.source_checkpoint")
    ckpt = Path(preset["target_overrides"][i + 1])
    if ckpt.is_file():
        return
    from ada_bench.runner import run_configs as run_experiment

    print(f"training a 2-epoch source model first ({ckpt}; its quality does not change the "
          "timings)", flush=True)
    run_experiment(preset["source"], [*preset["source_overrides"], "--trainer.max_epochs", "2"],
                   test=False)


def report(res: dict[str, Any], total: float, bare: dict[str, dict[str, float]]) -> dict[str, Any]:
    clock: Clock = res["clock"]
    s = dict(clock.seconds)
    parts = {"process start and imports": IMPORTED_AT, **s}
    step = s.get("train: forward-backward-optimiser", 0.0)
    n_steps = clock.count.get("train: forward-backward-optimiser", 1)
    inside_fit = ("train:", "validation", "checkpoint", "scoring", "data set-up")
    parts["fit: other (Lightning loop, hooks, logging)"] = s.get("fit (total)", 0.0) - sum(
        v for k, v in s.items() if k.startswith(inside_fit)
    )
    return {
        "wall_seconds": total,
        "steps": res["steps"],
        "parts": parts,
        "counts": dict(clock.count),
        "compute_fraction": step / total,
        "lightning_step_seconds": step / max(n_steps, 1),
        "bare_loop": bare,
        "test": res["test"],
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": os.getloadavg(),
        **({"interleaved": {"blocks": res["interleaved"], **interleaved_summary(res["interleaved"])}}
           if res.get("interleaved") else {}),
    }


ORDER = (
    "process start and imports",
    "build CLI objects (config, net, source weights)",
    "data set-up: phantom generation",
    "data set-up: read, validate, cache",
    "train: data loading",
    "train: augmentation",
    "train: forward-backward-optimiser",
    "validation",
    "checkpoint writes",
    "scoring rounds (rank, elect, label)",
    "fit: other (Lightning loop, hooks, logging)",
    "final test",
)


def render(paths: list[str]) -> str:
    """Markdown table comparing the breakdowns of profile JSON files (one column each)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    names = [Path(p).stem for p in paths]
    lines = ["| part | " + " | ".join(f"{n} s | {n} %" for n in names) + " |",
             "|---" * (1 + 2 * len(runs)) + "|"]
    for part in ORDER:
        cells = []
        for r in runs:
            v = r["parts"].get(part)
            cells += ["–", "–"] if v is None else [f"{v:.2f}", f"{100 * v / r['wall_seconds']:.1f}"]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| **wall time** | " + " | ".join(
        f"**{r['wall_seconds']:.1f}** | 100" for r in runs) + " |")
    lines += ["", "| measure | " + " | ".join(names) + " |", "|---" * (1 + len(runs)) + "|"]
    rows = {
        "training steps": lambda r: str(r["steps"]),
        "compute fraction (forward-backward-optimiser / wall)": lambda r: f"{r['compute_fraction']:.2f}",
        "step in the run (s)": lambda r: f"{r['lightning_step_seconds']:.3f}",
        "bare PyTorch step, same batch (s)": lambda r: f"{r['bare_loop']['contiguous']['step_seconds']:.3f}",
        "bare step, channels_last_3d (s)": lambda r: f"{r['bare_loop']['channels_last_3d']['step_seconds']:.3f}",
        "bare step, torch.compile (s)": lambda r: (
            f"{r['bare_loop']['compile']['step_seconds']:.3f} (compile + warm-up "
            f"{r['bare_loop']['compile']['warmup_seconds']:.0f} s)"
            if "step_seconds" in r["bare_loop"].get("compile", {})
            else r["bare_loop"].get("compile", {}).get("error", "not measured")),
        "test Dice (mean)": lambda r: f"{r['test'].get('test/dice_mean', float('nan')):.3f}",
        "torch threads / OMP_WAIT_POLICY": lambda r: f"{r['torch_threads']} / {r['omp_wait_policy']}",
        "load average at the end": lambda r: " / ".join(f"{x:.1f}" for x in r["load_average"]),
    }
    for name, fn in rows.items():
        lines.append(f"| {name} | " + " | ".join(fn(r) for r in runs) + " |")
    return "\n".join(lines)


def render_interleaved(paths: list[str]) -> str:
    """Markdown table of interleaved step measurements (``--interleave``), one row per file, and
    the median ratio per side (the file name's part before ``_``: ``before_1.json``)."""
    import statistics

    lines = ["| run | blocks | step in the run (s, median) | bare step (s, median) | ratio (median of "
             "blocks) | ratio range | test Dice mean | load average at the end |",
             "|---|---|---|---|---|---|---|---|"]
    sides: dict[str, list[float]] = {}
    for path in paths:
        r = json.loads(Path(path).read_text())
        i = r["interleaved"]
        name = Path(path).stem
        sides.setdefault(name.split("_")[0], []).append(i["median_ratio"])
        lines.append(f"| {name} | {i['blocks']} | {i['median_run_step_seconds']:.4f} | "
                     f"{i['median_bare_step_seconds']:.4f} | {i['median_ratio']:.3f} | "
                     f"{i['ratio_min']:.3f}-{i['ratio_max']:.3f} | "
                     f"{r['test'].get('test/dice_mean', float('nan')):.4f} | {r['load_average'][0]:.2f} |")
    lines += ["", "Median of the runs' ratios: " + ", ".join(
        f"{side} {statistics.median(v):.3f} (n = {len(v)})" for side, v in sides.items()) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ada_bench.runner import split_passthrough

    argv, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="power")
    p.add_argument("--out", help="write the breakdown as JSON here")
    p.add_argument("--bare-steps", type=int, default=20)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    p.add_argument("--interleave", type=int, default=0, metavar="N",
                   help="every N steps of the run, time --block bare steps (0: off)")
    p.add_argument("--block", type=int, default=5, help="bare steps per interleaved block")
    p.add_argument("--render", nargs="+", metavar="JSON",
                   help="print the markdown table of these profile files and exit")
    p.add_argument("--render-interleaved", nargs="+", metavar="JSON",
                   help="print the table of these --interleave files and exit")
    args = p.parse_args(argv)
    if args.render:
        print(render(args.render))
        return 0
    if args.render_interleaved:
        print(render_interleaved(args.render_interleaved))
        return 0
    os.chdir(REPO)
    preset = PRESETS[args.preset]
    if extra:
        configs = [extra[i + 1] for i, a in enumerate(extra) if a == "-c"]
        overrides = [a for i, a in enumerate(extra) if a != "-c" and (i == 0 or extra[i - 1] != "-c")]
    else:
        ensure_source(preset)
        configs, overrides = preset["target"], preset["target_overrides"]
    t = time.perf_counter()
    res = profile_run(configs, overrides, args.interleave, args.block)
    total = IMPORTED_AT + time.perf_counter() - t  # a source model trained first is not counted
    bare = {"contiguous": bare_loop(res["model"], res["batch"], args.bare_steps)}
    bare["channels_last_3d"] = bare_loop(res["model"], res["batch"], args.bare_steps,
                                         "channels_last_3d")
    if not args.no_compile:
        try:
            bare["compile"] = bare_loop(res["model"], res["batch"], args.bare_steps, compiled=True)
        except Exception as e:  # noqa: BLE001 - a missing compiler is a result, not a crash
            bare["compile"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    out = report(res, total, bare)
    out["configs"], out["overrides"] = configs, overrides
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
