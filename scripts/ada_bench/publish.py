"""Publish a benchmark: copy its tables and plots to a committed folder, fill the results block.

Every invocation of the benchmark script appends a ``start`` line to ``<out>/invocations.jsonl``
when it begins and an ``end`` line (wall seconds, runs made, failures, machine) when it ends, so
the published wall time is the sum over the invocations that made runs. An invocation that was
killed has no ``end`` line: it counts until its last result row. The block between
``<!-- results:<name>:start -->`` and ``<!-- results:<name>:end -->`` of a markdown file
(``benchmarks/README.md`` by default) is replaced by the generated text, its links rewritten to
resolve from that file's folder; nothing in it is typed by hand.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ada_bench.results import append_row, read_rows
from lightning_ada.io import write_text_atomic

#: the files of a results folder that are published (with results.jsonl): tables, figures, the
#: protocol of the primary endpoint and the invocation log that records its declaration
PUBLISHED = ("*.md", "*.csv", "*.png", "protocol.yaml", "protocol_*.yaml", "invocations.jsonl")
#: the tables of the README block, in order
README_TABLES = (
    "power",
    "power_penalty",
    "equal_cost",  # every equal-cost table and figure (ada_bench.equal_cost)
    "paired",
    "table1",
    "table1_distances",
    "table2",
    "ablation_schedule",
    "budget_curve",
    "forgetting",
    "query_overhead",
)

#: a markdown link or image target: ``](target)``
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def relink(text: str, base: Path | str, into: Path | str) -> str:
    """Rewrite the relative link targets of the markdown ``text``, written to resolve from the
    folder ``base``, so that they resolve from the folder ``into`` (both relative to the working
    directory, or absolute). Absolute paths become relative to ``into``; URLs and ``#anchor``
    links are left as they are.
    """

    def one(m: re.Match[str]) -> str:
        target = m.group(1)
        if target.startswith("#") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            return m.group(0)
        path, hash_, anchor = target.partition("#")
        moved = os.path.relpath(os.path.join(base, path), into).replace(os.sep, "/")
        return f"]({moved}{hash_}{anchor})"

    return _LINK.sub(one, text)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
    }


def record_start(
    out: Path, argv: Sequence[str], start: float, protocol: dict[str, Any] | None = None,
    protocols: Sequence[dict[str, Any]] = (),
) -> str:
    """Append the ``start`` line of an invocation; return its id.

    ``protocol`` (:func:`ada_bench.endpoint.protocol_record`: file, SHA-256, text) is the
    declaration of the benchmark's primary endpoint, recorded before any run of the invocation
    starts; ``protocols`` the declarations of further endpoints of the same invocation (the
    equal-cost one), recorded under ``protocols``.
    """
    ident = f"{int(start * 1000)}-{os.getpid()}"
    line: dict[str, Any] = {"id": ident, "event": "start", "argv": list(argv),
                            "start": _stamp(start)}
    if protocol is not None:
        line["protocol"] = dict(protocol)
    if protocols:
        line["protocols"] = [dict(p) for p in protocols]
    append_row(out / "invocations.jsonl", line)
    return ident


def record_end(out: Path, ident: str, seconds: float, ran: int, failed: int) -> None:
    """Append the ``end`` line of invocation ``ident``."""
    append_row(
        out / "invocations.jsonl",
        {
            "id": ident,
            "event": "end",
            "seconds": round(seconds, 1),
            "ran": ran,
            "failed": failed,
            "machine": machine(),
        },
    )


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _parse(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))


def invocations(out: Path) -> list[dict[str, Any]]:
    """The invocations of ``out``, oldest first: ``argv``, ``start``, ``seconds``, ``ran``,
    ``failed``, ``machine`` and ``killed`` (no end line: seconds and runs counted from the
    result rows written between its start and the next invocation's)."""
    path = out / "invocations.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    starts = [x for x in lines if x.get("event") == "start"]
    ends = {x["id"]: x for x in lines if x.get("event") == "end"}
    stamps = sorted(_parse(r["time"]) for r in read_rows(out / "results.jsonl") if r.get("time"))
    found = []
    for i, s in enumerate(starts):
        t0 = _parse(s["start"])
        t1 = _parse(starts[i + 1]["start"]) if i + 1 < len(starts) else float("inf")
        inv = {"argv": s["argv"], "start": s["start"], "killed": s["id"] not in ends}
        if s["id"] in ends:
            inv.update({k: ends[s["id"]][k] for k in ("seconds", "ran", "failed", "machine")})
        else:
            mine = [t for t in stamps if t0 <= t < t1]
            inv.update(seconds=(mine[-1] - t0) if mine else 0.0, ran=len(mine), failed=0)
        found.append(inv)
    return found


def _header(readme: Path) -> list[str]:
    """The command / machine / wall-time lines of a README written by :func:`publish` (between
    its title and its first table), [] if there are none."""
    if not readme.is_file():
        return []
    lines = readme.read_text().splitlines()
    if not lines or not lines[0].startswith("### "):
        return []
    head = []
    for line in lines[1:]:
        if line.startswith("#### "):
            break
        head.append(line)
    while head and not head[0].strip():
        head.pop(0)
    while head and not head[-1].strip():
        head.pop()
    return [*head, ""] if head else []


def publish(out: Path, dest: Path, title: str) -> str:
    """Copy the tables and plots of ``out`` (and its ``results.jsonl``) into ``dest``.

    ``out`` may be ``dest`` itself (a committed folder summarised again in place). The block's
    header (commands, machine, wall time) comes from ``out/invocations.jsonl``; without one (a
    committed folder published before the log was), the header of ``dest/README.md`` is kept.

    Returns:
        The README text of ``dest``: command, machine, wall time, the tables and links to the
        plots not embedded in a table, paths relative to the working directory (the repository
        root); also written to ``dest/README.md`` with its links relative to ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    same = out.resolve() == dest.resolve()
    if not same:
        for pattern in PUBLISHED:
            for f in sorted(out.glob(pattern)):
                shutil.copy2(f, dest / f.name)
        shutil.copy2(out / "results.jsonl", dest / "results.jsonl")
    inv = [i for i in invocations(out) if i.get("ran")]
    rows = read_rows(out / "results.jsonl")
    lines = [f"### {title}", ""]
    if inv:
        cmds = list(dict.fromkeys(" ".join(["python scripts/benchmark.py", *i["argv"]]) for i in inv))
        m = next((i["machine"] for i in reversed(inv) if i.get("machine")), machine())
        total = sum(float(i["seconds"]) for i in inv)
        each = ", ".join(
            f"{float(i['seconds']) / 60:.1f} min" + (" (killed)" if i["killed"] else "")
            for i in inv
        )
        device = "CUDA" if m["cuda"] else "no GPU"
        lines += [
            "Command" + ("s" if len(cmds) > 1 else "") + ":",
            "```bash",
            *cmds,
            "```",
            f"Machine: {m['cores']} CPU cores ({m['cpu']}), {device}, Python {m['python']}, "
            f"torch {m['torch']}. Wall time {total / 60:.1f} min over {len(inv)} invocation(s) "
            f"({each}; {sum(int(i['ran']) for i in inv)} runs made, "
            f"{sum(int(i['failed']) for i in inv)} failed); {len(rows)} rows in results.jsonl.",
            "",
        ]
    else:
        lines += _header(dest / "README.md")
    tables = ""
    for name in README_TABLES:
        f = dest / f"{name}.md"
        if f.exists():
            text = relink(f.read_text(), dest, ".")  # the table's links, from the working dir
            text = text.replace("\n## ", "\n#### ").replace("## ", "#### ", 1)
            lines += [text, ""]
            tables += text
    for png in sorted(dest.glob("*.png")):
        if f"]({png.as_posix()})" not in tables:  # a figure no table embeds
            lines.append(f"![{png.stem}]({png.as_posix()})")
    lines += ["", f"All files: `{dest.as_posix()}/` (all_runs.md lists every run group)."]
    text = "\n".join(lines) + "\n"
    (dest / "README.md").write_text(relink(text, ".", dest))
    return text


def fill_readme(readme: Path, name: str, text: str, base: Path | str = ".") -> None:
    """Replace the block ``<!-- results:<name>:start --> ... :end -->`` of ``readme`` by ``text``.

    The links of ``text`` resolve from the folder ``base`` (the working directory, where
    :func:`publish` writes them from); they are rewritten to resolve from ``readme``'s folder.

    Raises:
        ValueError: the markers are missing.
    """
    start, end = f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"
    doc = readme.read_text()
    if start not in doc or end not in doc:
        raise ValueError(f"{readme}: no {start} ... {end} block to fill")
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    text = relink(text, base, readme.parent)
    write_text_atomic(readme, f"{head}{start}\n{text}{end}{tail}")
