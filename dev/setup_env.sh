#!/usr/bin/env bash
# Create or reuse the project's virtual environment at .venv/ (README.md, "Install and run"):
# torch + torchvision from the registry (not the machine's CPU-only local wheel, which breaks
# torchvision), detectron2 main code from the `sal-detectron2` wheel retagged for this Python,
# then this package in editable mode. A second run with unchanged inputs returns in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEMASK_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_REQ="torch==2.13.0,!=2.13.0+cpu"
TORCHVISION_REQ="torchvision==0.28.0"
D2_VERSION="0.7.2"

# The stamp records everything that decides the environment's content.
stamp_inputs() {
  cat "$ROOT/pyproject.toml" "$ROOT/dev/setup_env.sh"
}
STAMP="$VENV/.semask_d2_stamp"
want="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

echo "[setup_env] preparing $VENV" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

"${PIP[@]}" install --upgrade pip wheel setuptools >/dev/null
if ! "$VENV/bin/python" -c "import torch, torchvision, torchvision.ops; torchvision.ops.nms" 2>/dev/null; then
  "${PIP[@]}" install "$TORCH_REQ" "$TORCHVISION_REQ"
fi

if ! "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
  wheel_dir="$(mktemp -d)"
  trap 'rm -rf "$wheel_dir"' EXIT
  "${PIP[@]}" download --no-deps --only-binary=:all: --python-version 3.10 \
    -d "$wheel_dir" "sal-detectron2==$D2_VERSION"
  # The wheel is tagged cp310 but is pure Python apart from a `_C` module that detectron2
  # imports lazily; retagging it as py3-none-any lets pip install it on any CPython 3.
  mv "$wheel_dir"/sal_detectron2-*.whl "$wheel_dir/sal_detectron2-$D2_VERSION-py3-none-any.whl"
  "${PIP[@]}" install "$wheel_dir/sal_detectron2-$D2_VERSION-py3-none-any.whl" "numpy<2"
fi

"${PIP[@]}" install -e "$ROOT[dev,bench,export]"
echo "$want" > "$STAMP"
echo "[setup_env] ready: $VENV" >&2
