# The two commands of the README. Each does its own idempotent set-up (.venv) first.
.PHONY: setup demo test test-all

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py

test: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadgroup   # two single-thread workers: the 2 cores at full speed

test-all: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadgroup -m ""
