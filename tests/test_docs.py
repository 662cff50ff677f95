"""The documentation: links resolve, stated results come from the committed tables they cite.

- every relative link (and image) in README.md, docs/*.md and benchmarks/README.md points at an
  existing file or folder, and a ``#anchor`` at an existing heading of its target;
- every result a paragraph, list item or table row states next to a link to a committed table
  (``benchmarks/**/*.md`` or ``.csv``; a list item without one: the tables of the paragraph that
  introduces its list) is found in that table: each number with a decimal point, a sign or a
  ``%`` (rounded as stated), each ``a / b`` count and each count of runs, rows or pairs; a count
  of seeds is the number of seeds in the cited folder's results.jsonl; the rows of the README's
  "Which strategy when" table must each cite such a table, and so must every count of runs,
  rows or seeds on the pages that report results (README.md, docs/findings.md);
- the seed counts benchmarks/README.md states next to a benchmark folder are that folder's;
- the result blocks of benchmarks/README.md are the published text of their folders (the
  harness writes both, nothing is typed);
- no issue numbers, config files that exist, and a README that stays short.
"""

from __future__ import annotations

import functools
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCH_README = ROOT / "benchmarks" / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, BENCH_README, *DOCS]
#: pages whose stated results are checked against the tables they cite (benchmarks/README.md is
#: generated from those tables)
PROSE = [README, *DOCS]

LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
#: a stated number: optional sign (not a hyphen inside a word or range), digits, decimals, ``%``
NUMBER = re.compile(r"(?<![\w.\-−+])([+\-−]?)(\d+(?:\.\d+)?)(\s?%)?")
#: any number in a table file
ANY_NUMBER = re.compile(r"([+\-−]?)(\d+(?:\.\d+)?)")
FRACTION = re.compile(r"(?<![\w.])(\d+) / (\d+)(?![\w.])")
#: a stated count of runs, rows, seeds, invocations or case pairs (digits or a number word)
COUNT = re.compile(
    r"(?<![\w.,])(\d+|one|two|three|four|five|six|seven|eight|nine|ten)\s+"
    r"(?:paired\s+|out-of-pool\s+)?(runs?|rows|seeds?|invocations?|test-case pairs|case-runs)"
    r"\b",
    re.IGNORECASE,
)
WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
#: pages that report results: every count of runs, rows or seeds they state cites a table
RESULT_PAGES = [README, ROOT / "docs" / "findings.md"]
RESULT_FILE = re.compile(r"(^|/)benchmarks/.+\.(md|csv)$")


def outside_code(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((i, line))
    return lines


def without_inline_code(line: str) -> str:
    return re.sub(r"`[^`]*`", "", line)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces -> -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in outside_code(path.read_text()):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of the links outside code."""
    found = []
    for i, line in outside_code(path.read_text()):
        for m in LINK.finditer(without_inline_code(line)):
            found.append((i, m.group(2)))
    return found


def resolve(page: Path, target: str) -> tuple[Path, str]:
    path, _, anchor = target.partition("#")
    return ((page.parent / path).resolve() if path else page), anchor


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target))


def broken_links(page: Path) -> list[str]:
    broken = []
    for line, target in links(page):
        if is_external(target):
            continue
        path, anchor = resolve(page, target)
        if not path.exists():
            broken.append(f"{page.name}:{line}: {target} (no such file)")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{page.name}:{line}: {target} (no heading #{anchor})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, "\n".join(broken)


def test_the_link_check_catches_broken_links(tmp_path: Path) -> None:
    assert slug("Planning an annotation session: `lightning-ada query`") == (
        "planning-an-annotation-session-lightning-ada-query"
    )
    assert slug("Results: phantom_quick") == "results-phantom_quick"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# B\n## Same\n## Same\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](sub/b.md#same-1) [ok](sub/) [ok](#a) [web](https://x.org/y)\n"
        "`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n# A\n"
        "[gone](sub/c.md) [no heading](sub/b.md#same-2) ![img](sub/b.png)\n"
    )
    assert [b.split(": ", 1)[1] for b in broken_links(page)] == [
        "sub/c.md (no such file)", "sub/b.md#same-2 (no heading #same-2)",
        "sub/b.png (no such file)",
    ]


def blocks(text: str) -> list[tuple[int, str, str]]:
    """The headings, paragraphs, list items and table rows outside code, each as (first line,
    text, kind: ``heading``, ``paragraph``, ``item`` or ``row``)."""
    found: list[tuple[int, str, str]] = []
    current: list[str] = []
    kind = "paragraph"
    start = prev = 0

    def flush() -> None:
        if current:
            found.append((start, " ".join(current), kind))
            current.clear()

    for i, line in outside_code(text):
        if i != prev + 1:  # a code block ended the paragraph
            flush()
        prev = i
        stripped = line.strip()
        if not stripped:
            flush()
        elif stripped.startswith("#"):
            flush()
            found.append((i, stripped, "heading"))
        elif stripped.startswith("|"):
            flush()
            found.append((i, stripped, "row"))
        elif re.match(r"^([-*]|\d+\.)\s", stripped):
            flush()
            start, kind = i, "item"
            current.append(stripped)
        else:
            if not current:
                start, kind = i, "paragraph"
            current.append(stripped)
    flush()
    return found


def cited_tables(page: Path, block: str) -> list[Path]:
    tables = []
    for m in LINK.finditer(without_inline_code(block)):
        target = m.group(2)
        if is_external(target):
            continue
        path, _ = resolve(page, target)
        if RESULT_FILE.search(path.as_posix()) and path.is_file() and path != BENCH_README:
            tables.append(path)
    return tables


def stated(block: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The (sign, number) results and the ``a / b`` counts a block states (links and code
    dropped)."""
    text = LINK.sub(" ", without_inline_code(block))
    text = re.sub(r"(?<=\d)-(?=\d)", " ", text)  # a range a-b states a and b
    numbers = []
    for m in NUMBER.finditer(text):
        sign, digits, percent = m.group(1), m.group(2), m.group(3)
        if sign or "." in digits or percent:
            numbers.append((sign.replace("−", "-"), digits))
    fractions = [f"{a} / {b}" for a, b in FRACTION.findall(text)]
    return numbers, fractions


def counts(block: str) -> list[tuple[int, str]]:
    """The (number, unit) counts of runs, rows, seeds ... a block states (links and code
    dropped)."""
    text = LINK.sub(" ", without_inline_code(block))
    return [(int(n) if n.isdigit() else WORDS[n.lower()], unit.lower())
            for n, unit in COUNT.findall(text)]


@functools.lru_cache(maxsize=None)
def seeds_of(folder: Path) -> int | None:
    """How many seeds the results.jsonl of a benchmark folder holds (None: no results file)."""
    path = folder / "results.jsonl"
    if not path.is_file():
        return None
    seeds = set()
    for line in path.read_text().splitlines():
        m = re.search(r'"seed": (\d+)', line)
        if m:
            seeds.add(int(m.group(1)))
    return len(seeds)


def table_values(paths: list[Path]) -> tuple[list[Decimal], str]:
    text = "\n".join(p.read_text() for p in paths)
    values = [Decimal((s.replace("−", "-") if s != "+" else "") + d)
              for s, d in ANY_NUMBER.findall(text)]
    return values, re.sub(r"\s+", " ", text)


def found(sign: str, digits: str, values: list[Decimal]) -> bool:
    """``digits`` (with ``sign``: that sign; without: either) is a value of the table, rounded
    half-up to the stated decimals."""
    want = Decimal(digits)
    step = Decimal(1).scaleb(want.as_tuple().exponent)
    for v in values:
        if sign == "-" and v >= 0 or sign == "+" and v < 0:
            continue
        if abs(v).quantize(step, rounding=ROUND_HALF_UP) == want:
            return True
    return False


def check_block(page: Path, line: int, block: str, tables: list[Path]) -> list[str]:
    values, flat = table_values(tables)
    numbers, fractions = stated(block)
    names = ", ".join(t.name for t in tables)
    bad = [f"{page.name}:{line}: {s}{d} not in {names}" for s, d in numbers
           if not found(s, d, values)]
    bad += [f"{page.name}:{line}: '{f}' not in {names}" for f in fractions if f not in flat]
    seeds = {n for t in tables if (n := seeds_of(t.parent)) is not None}
    for n, unit in counts(block):  # seeds: read against the tables' results.jsonl if any
        if unit.startswith("seed") and seeds:
            if n not in seeds:
                bad.append(f"{page.name}:{line}: {n} {unit}, but the results of {names} hold "
                           f"{' or '.join(map(str, sorted(seeds)))} seeds")
        elif not found("", str(n), values):
            bad.append(f"{page.name}:{line}: {n} {unit} not in {names}")
    return bad


@pytest.mark.parametrize("page", PROSE, ids=lambda p: str(p.relative_to(ROOT)))
def test_stated_results_are_in_the_tables_they_cite(page: Path) -> None:
    bad: list[str] = []
    checked = 0
    intro: list[Path] = []  # the tables cited by the paragraph that introduces a list or table
    for line, block, kind in blocks(page.read_text()):
        tables = cited_tables(page, block) if kind != "heading" else []
        if kind in ("item", "row"):  # a list or a table reads against the paragraph before it
            tables = tables or intro
        else:
            intro = tables if kind == "paragraph" else []
        if tables:
            checked += 1
            bad += check_block(page, line, block, tables)
    assert not bad, "\n".join(bad)
    if page.name == "findings.md":
        assert checked >= 10


@pytest.mark.parametrize("page", RESULT_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_stated_counts_of_runs_and_seeds_cite_a_table(page: Path) -> None:
    """A count of runs, rows or seeds on a page that reports results sits in a block that cites
    the table it comes from (so the check above reads it against that table and its data)."""
    bad: list[str] = []
    intro: list[Path] = []
    for line, block, kind in blocks(page.read_text()):
        tables = cited_tables(page, block) if kind != "heading" else []
        if kind in ("item", "row"):  # a list or a table reads against the paragraph before it
            tables = tables or intro
        else:
            intro = tables if kind == "paragraph" else []
        if counts(block) and not tables:
            bad.append(f"{page.name}:{line}: {counts(block)} cite no committed table")
    assert not bad, "\n".join(bad)


def test_the_benchmark_folders_seed_counts_are_their_data() -> None:
    """benchmarks/README.md's own text (outside the generated blocks): a count of seeds next to
    a link to a benchmark folder is the number of seeds in that folder's results.jsonl."""
    doc = re.sub(r"<!-- results:([\w.-]+):start -->.*?<!-- results:\1:end -->", "",
                 BENCH_README.read_text(), flags=re.DOTALL)
    checked, bad = 0, []
    for line, block, _ in blocks(doc):
        folders = [BENCH_README.parent / t.rstrip("/") for _, t in LINK.findall(block)
                   if not is_external(t) and t.endswith("/")]
        known = {f.name: n for f in folders if (n := seeds_of(f)) is not None}
        said = [n for n, unit in counts(block) if unit.startswith("seed")]
        if not known or not said:
            continue
        checked += 1
        if len(known) == 1:
            bad += [f"README:{line}: {n} seeds, {known}" for n in said if n not in known.values()]
    assert not bad, "\n".join(bad)
    assert checked >= 3
    assert counts("10 seeds, one seed, 9 paired runs, 670 rows, 36 out-of-pool case-runs") == [
        (10, "seeds"), (1, "seed"), (9, "runs"), (670, "rows"), (36, "case-runs")]


def strategy_section() -> str:
    text = README.read_text()
    start = text.index("\n## Which strategy when\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_which_strategy_when_rows_cite_a_table_that_holds_their_numbers() -> None:
    rows = [r for r in strategy_section().splitlines() if r.startswith("|")][2:]  # no header
    assert len(rows) >= 5
    bad: list[str] = []
    for row in rows:
        tables = cited_tables(README, row)
        assert tables, f"row cites no committed table: {row}"
        numbers, fractions = stated(row)
        assert numbers or fractions, f"row states no result: {row}"
        bad += check_block(README, 0, row, tables)
    assert not bad, "\n".join(bad)


def test_the_number_check_catches_a_wrong_number(tmp_path: Path) -> None:
    table = tmp_path / "benchmarks" / "t.md"
    table.parent.mkdir()
    table.write_text("| a | 2.48 | [0.72, 4.84] | -13.33 ± 5.54 | 2 / 9 | 20 % |\n")
    page = tmp_path / "page.md"
    ok = "+2.5 [0.72, 4.8], 13.33 points, -13.3, 0.72-13.33, 2 / 9 at 20 % [t](benchmarks/t.md)"
    assert cited_tables(page, ok) == [table.resolve()]
    assert check_block(page, 1, ok, [table]) == []
    for wrong in ("+2.6", "-2.48", "+13.33", "3 / 9", "30 %", "0.8", "0.72-9.99"):
        assert check_block(page, 1, f"{wrong} [t](benchmarks/t.md)", [table]), wrong
    # a list item without a link of its own is read with its introducing paragraph's tables
    kinds = [k for _, _, k in blocks("# H\nIntro [t](benchmarks/t.md):\n- +2.5\n  more\n- 1.0\n\nText\n")]
    assert kinds == ["heading", "paragraph", "item", "item", "paragraph"]


def test_the_count_check_catches_a_wrong_count(tmp_path: Path) -> None:
    table = tmp_path / "benchmarks" / "t" / "t.md"
    table.parent.mkdir(parents=True)
    table.write_text("| Runs | 9 |\n")
    (table.parent / "results.jsonl").write_text(
        "".join(f'{{"task": "x", "run": "r", "seed": {s}}}\n' for s in (0, 1, 2)))
    page = tmp_path / "page.md"
    assert check_block(page, 1, "3 seeds x 3 folds = 9 paired runs [t](benchmarks/t/t.md)",
                       [table]) == []
    assert check_block(page, 1, "9 seeds [t](benchmarks/t/t.md)", [table]) == [
        "page.md:1: 9 seeds, but the results of t.md hold 3 seeds"]
    assert check_block(page, 1, "three seeds, 7 runs [t](benchmarks/t/t.md)", [table]) == [
        "page.md:1: 7 runs not in t.md"]


def test_benchmark_blocks_are_the_published_text_of_their_folders() -> None:
    from ada_bench.publish import relink

    doc = BENCH_README.read_text()
    names = re.findall(r"<!-- results:([\w.-]+):start -->", doc)
    assert {"power", "brats18_cbica", "brats18", "phantom_quick"} <= set(names)
    for name in names:
        body = doc.split(f"<!-- results:{name}:start -->", 1)[1]
        body = body.split(f"<!-- results:{name}:end -->", 1)[0].lstrip("\n")
        folder = ROOT / "benchmarks" / name
        assert relink(body, "benchmarks", f"benchmarks/{name}") == (folder / "README.md").read_text()
    assert "<!-- results:" not in README.read_text()  # the README holds no result block


def test_no_issue_numbers() -> None:
    pattern = re.compile(r"issue[\s_-]*#?\d+|(?<![\w/&])#\d+\b", re.IGNORECASE)
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in PAGES for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert not hits, "\n".join(hits)


def expand(path: str) -> list[str]:
    m = re.search(r"\{([^{}]+)\}", path)
    if not m:
        return [path]
    return [x for alt in m.group(1).split(",")
            for x in expand(path[: m.start()] + alt + path[m.end():])]


def test_named_config_files_exist() -> None:
    missing = []
    for page in [README, *DOCS]:
        for path in re.findall(r"configs/[\w/{},.-]*\.yaml", page.read_text()):
            for one in expand(path):
                if not (ROOT / one).is_file():
                    missing.append(f"{page.name}: {one}")
    assert not missing, "\n".join(missing)


def test_the_readme_quotes_the_demo_as_the_demo_printed_it() -> None:
    """A demo table in the README is the committed output of a demo run, line for line."""
    committed = ROOT / "benchmarks" / "demo" / "demo_results.md"
    readme = README.read_text()
    if not committed.is_file():
        assert "this run (seed" not in readme, "the README quotes a demo run that is not committed"
        return
    table = [x for x in committed.read_text().splitlines() if x.startswith("|")]
    assert table and all(line in readme.splitlines() for line in table)


def test_readme_is_short_and_links_every_docs_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 350
    for page in DOCS:
        assert f"(docs/{page.name})" in text, page.name
