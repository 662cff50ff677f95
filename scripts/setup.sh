#!/usr/bin/env bash
# Idempotent set-up: a .venv with torch 2.13.0 and lightning_ada (+ test and MONAI Label extras).
# Re-runs only when pyproject.toml changed since the last successful set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.setup-$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned. Which build pip takes depends on its index: a local CPU wheel where pip's
# configuration serves one; from PyPI on Linux x86_64 the CUDA build (several GB). Choose with
# TORCH_INDEX_URL, e.g. https://download.pytorch.org/whl/cpu for the CPU build.
.venv/bin/python -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,label]"
# MONAI Label for the app (lightning_ada/monailabel/), without its own requirements: the `label`
# extra above lists what it imports (pyproject.toml says why sam2 is left out, and why
# pydicom-seg comes without its numpy < 2 pin)
.venv/bin/python -m pip install -q --no-deps "monailabel==0.8.5" "pydicom-seg==0.4.1"
rm -f .venv/.setup-*
touch "$stamp"
