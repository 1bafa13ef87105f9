#!/usr/bin/env bash
# Formatting and lint checks (black -l 100, flake8 with .flake8), as detectron2's dev/linter.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
$PY -m black --check -l 100 semask_d2 tools tests demo datasets train_net.py
$PY -m flake8 semask_d2 tools tests demo datasets train_net.py
