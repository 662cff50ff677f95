"""Wall times of the MONAI Label app: the server's start and one annotation round,
on the tests' tiny phantom (16^3, 6 pool cases) with its 2-epoch source model.

    python scripts/bench_monailabel.py --out benchmarks/monailabel.md [--repeats 3]

Per repeat: a fresh datastore, ``python -m lightning_ada.monailabel`` started (until ``/info/``
answers), then through MONAI Label's client: next sample by mmacts (the ranking made: one
``lightning-ada query``), the same again (cached), a label saved, a training to the end
(``lightning-ada fit``, 3 tiny epochs), an inference (``lightning-ada predict``), next sample
under the new model. Every run is a child process, so most of each time is its start.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "tests" / "conf"
STEPS = ("server start", "next sample (ranking made)", "next sample (cached)", "save label",
         "train (3 tiny epochs)", "infer", "next sample (new model)")


def one_round(work: Path, phantom: Path, source: Path) -> dict[str, float]:
    from lightning_ada.monailabel.launch import ServerProcess
    from lightning_ada.monailabel.prepare import prepare

    studies = work / "studies"
    prepare(str(phantom), "datalist", studies, None, [1, 2, 4], "pool", False)
    server = ServerProcess(studies, source, [CONF / "random_tiny.yaml"], work / "server.log", ["mmacts"])
    times: dict[str, float] = {}
    t = time.perf_counter()
    try:
        client = server.start()
        times["server start"] = time.perf_counter() - t

        def timed(name, call):
            t0 = time.perf_counter()
            out = call()
            times[name] = time.perf_counter() - t0
            return out

        first = timed("next sample (ranking made)", lambda: client.next_sample("mmacts", {}))
        timed("next sample (cached)", lambda: client.next_sample("mmacts", {}))
        label = phantom / first["id"] / f"{first['id']}_seg.nii.gz"
        timed("save label", lambda: client.save_label(first["id"], str(label), tag="final"))

        def train():
            client.train_start("lightning_ada", {})
            while client.train_status()["status"] in ("SUBMITTED", "RUNNING"):
                time.sleep(0.2)
        timed("train (3 tiny epochs)", train)
        timed("infer", lambda: client.infer("lightning_ada", first["id"], {}))
        timed("next sample (new model)", lambda: client.next_sample("mmacts", {}))
    finally:
        server.kill()
    return times


def datastore_writes(sizes: list[int], out: Path) -> None:
    """Seconds to store one ranking in the image infos of a datastore of N images: MONAI Label's
    ``update_image_info`` per image (the whole datastore file rewritten each time) against the
    app's ``update_image_infos`` (written once)."""
    import nibabel as nib
    import numpy as np

    from lightning_ada.monailabel.datastore import CheckedDatastore

    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            image = nib.Nifti1Image(np.ones((2, 2, 2, 4), np.float32), np.eye(4))
            for i in range(n):
                nib.save(image, Path(tmp) / f"case_{i:05d}.nii.gz")
            store = CheckedDatastore(tmp, [1, 2, 4], extensions=["*.nii.gz"], auto_reload=False)
            infos = {f"case_{i:05d}": {"lightning_ada": {"mmacts": {"rank": i + 1, "score": 0.5}}}
                     for i in range(n)}
            t = time.perf_counter()
            for image_id, info in infos.items():
                store.update_image_info(image_id, info)
            one_by_one = time.perf_counter() - t
            t = time.perf_counter()
            store.update_image_infos(infos)
            rows.append((n, one_by_one, time.perf_counter() - t))
        print(f"{n} images: one by one {rows[-1][1]:.2f} s, at once {rows[-1][2]:.3f} s", flush=True)
    load = os.getloadavg()
    lines = ["# Storing a ranking in the datastore's image infos", "", "```bash",
             f"python scripts/bench_monailabel.py --datastore-sizes {' '.join(map(str, sizes))} --out {out}",
             "```", "", f"{os.cpu_count()} CPUs, load average at the end {load[0]:.2f} (read the times "
             f"as orders of magnitude); {time.strftime('%Y-%m-%d %H:%M')}. One ranking row per image "
             "(2^3-voxel 4-D images: the image size does not enter).", "",
             "| images | update_image_info per image (s) | update_image_infos, once (s) |", "|---|---|---|",
             *(f"| {n} | {a:.2f} | {b:.3f} |" for n, a, b in rows)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"-> {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/monailabel.md")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--datastore-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="instead of the round: time storing a ranking in datastores of N images")
    args = p.parse_args()
    if args.datastore_sizes:
        datastore_writes(args.datastore_sizes, Path(args.out))
        return
    from lightning_ada.main import main as cli
    from lightning_ada.phantom.simulator import generate_phantom

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        phantom = root / "phantom"
        generate_phantom(phantom, task="glioma", size=16, n_source=4, n_source_test=2, n_pool=6,
                         n_test=2, seed=0, progress=False)
        cli(["fit", "-c", str(CONF / "source_tiny.yaml"), "--data.root", str(phantom),
             "--trainer.default_root_dir", str(root / "source")])
        source = root / "source" / "checkpoints" / "last.ckpt"
        runs = []
        for i in range(args.repeats):
            (root / f"r{i}").mkdir()
            runs.append(one_round(root / f"r{i}", phantom, source))
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in runs[-1].items()), flush=True)
    load = os.getloadavg()
    lines = ["# The MONAI Label app: server start and one annotation round (wall times)", "",
             "```bash", f"python scripts/bench_monailabel.py --repeats {args.repeats}", "```", "",
             f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"load average at the end {load[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M')}. "
             "The tests' tiny phantom (16^3, 6 pool cases, 2-epoch source model, "
             "`tests/conf/random_tiny.yaml`); every step is MONAI Label's client against a "
             "server on 127.0.0.1, and every lightning_ada run a child process (its start, "
             "importing torch, Lightning and MONAI, is most of each step).", "",
             "| step | " + " | ".join(f"repeat {i + 1} (s)" for i in range(len(runs))) + " | median (s) |",
             "|---|" + "---|" * (len(runs) + 1)]
    for step in STEPS:
        vals = [r[step] for r in runs]
        lines.append(f"| {step} | " + " | ".join(f"{v:.1f}" for v in vals)
                     + f" | {statistics.median(vals):.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
