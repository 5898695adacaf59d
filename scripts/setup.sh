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
# The course's Jupyter kernel, inside the venv (--sys-prefix), named as in the notebooks' metadata.
.venv/bin/python -m ipykernel install --sys-prefix --name mechunlearn_nb --display-name "Python (mechunlearn_nb)" \
    > /dev/null
# A browser for tests/test_browser.py (JupyterLab driven by Playwright): Debian's chromium where we can
# install it (root with apt-get; Playwright's own build does not run on every Linux), else Playwright's.
if [ -x /usr/bin/chromium ]; then
    :
elif command -v apt-get > /dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing chromium (apt-get) for the browser tests ..."
    apt-get update -qq > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null
elif ! .venv/bin/python -c "import os, sys; from playwright.sync_api import sync_playwright
with sync_playwright() as p: sys.exit(not os.path.exists(p.chromium.executable_path))" 2> /dev/null; then
    echo "installing Playwright's chromium for the browser tests ..."
    .venv/bin/python -m playwright install chromium
fi
