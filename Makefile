# The two commands of the README. Each does its own idempotent set-up (.venv) first.
.PHONY: setup demo test test-all

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py

# the default suite (two single-thread workers: the 2 cores at full speed), then the MONAI Label
# app driven through a real server by MONAI Label's client (marked slow: one server, one worker)
test: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadgroup
	.venv/bin/python -c "import monailabel, lightning_ada.monailabel.app"  # the extra is there: no silent skip
	.venv/bin/python -m pytest -q -m slow tests/test_monailabel.py

test-all: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadgroup -m ""
