#!/usr/bin/env bash
# The project's test command: set up (or reuse) .venv, then run the whole test suite on CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/dev/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -n 2 tests "$@"
