"""Benchmark tooling: the protocol (folds, runs), the results file, tables, statistics, plots.

The experiments themselves run through :func:`ada_bench.runner.run_experiment` (the same
configs as the command line); ``scripts/benchmark.py`` drives them and ``scripts/bench_speed.py``
measures the cost of the pieces. Everything here except :mod:`.loop`, :mod:`.queried` and the
speed modules works on plain result rows (dicts), so tables and plots can be rebuilt from
``results.jsonl`` alone.
"""
