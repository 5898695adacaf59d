#!/usr/bin/env bash
# Create .venv if missing and install everything: torch 2.13.0 first (CPU build on this kind of
# machine; a newer or unpinned torch would pull a multi-GB CUDA build), then the package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, transformer_lens, mechunlearn_nb; print('torch', torch.__version__, '| transformer_lens ok | mechunlearn_nb', mechunlearn_nb.__version__)"
