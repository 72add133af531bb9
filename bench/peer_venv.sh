#!/usr/bin/env bash
# Install the public edown 0.2.1 (the peer we measure against) into its own virtualenv, never ours.
# Idempotent. Prints the peer's python.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venvs/edown-0.2.1
PY=""
for candidate in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'pass' 2>/dev/null; then
    PY=$("$candidate" -c 'import sys; print(sys.executable)'); break
  fi
done
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import importlib.metadata as m; import xarray, zarr; assert m.version("edown") == "0.2.1"' 2>/dev/null; then
  echo "$PWD/$VENV/bin/python"
  exit 0
fi
if command -v uv >/dev/null 2>&1; then
  [ -x "$VENV/bin/python" ] || uv venv --quiet -p "$PY" "$VENV"
  uv pip install --quiet -p "$VENV/bin/python" "edown[stack,dask]==0.2.1"
else
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet "edown[stack,dask]==0.2.1"
fi
echo "$PWD/$VENV/bin/python"
