"""The benchmark harness: a layer above ``lightning_ada`` that the library never imports.

A run is a config dict composed from the task's YAML files and overrides
(:func:`ada_bench.runner.compose`) and made through the library's Python API
(:func:`ada_bench.runner.run_experiment`: ``lightning_ada.main.main(args=<dict>, run=False)``,
then ``trainer.fit`` / ``trainer.test``). ``scripts/benchmark.py`` drives the protocol
(:mod:`.tasks`, :mod:`.folds`, :mod:`.protocol`, :mod:`.loop`; parallel jobs through submitit,
:mod:`.jobs`) and ``scripts/bench_speed.py`` measures the cost of the pieces. Everything except
:mod:`.loop`, :mod:`.jobs`, :mod:`.curve`, :mod:`.queried` and the speed modules works on plain
result rows (dicts), so tables (:mod:`.tables`, :mod:`.power`) and plots can be rebuilt from
``results.jsonl`` alone.
"""
