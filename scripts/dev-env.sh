#!/usr/bin/env bash
# Create (or update) the project's virtualenv in .venv with edown installed editable plus dev tools.
# Prefers python3.12 (newest zarr/rasterio wheels need >= 3.12), then 3.13, then python3 (>= 3.10).
# Uses uv when it can be had (seconds), plain pip otherwise.
# The dev tools come from requirements/dev.lock (exact versions, hash-checked; scripts/lock.sh makes it),
# so every checkout and CI test the same packages. EDOWN_UNLOCKED=1 resolves pyproject.toml's ranges instead
# (the newest allowed versions, as a user gets); other EDOWN_EXTRAS are always resolved that way.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  # pyenv installs shims for every version, but a shim only runs when that version is selected: look
  # at pyenv's own interpreters too, and keep the first candidate that actually runs.
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  for candidate in "${EDOWN_PYTHON:-}" python3.12 "$root"/versions/3.12*/bin/python3.12 python3.13 \
                   "$root"/versions/3.13*/bin/python3.13 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      "$candidate" -c 'import sys; print(sys.executable)'
      return 0
    fi
  done
  echo "edown needs Python >= 3.10; none found (set EDOWN_PYTHON)" >&2
  return 1
}

PY=$(pick_python)
EXTRAS="${EDOWN_EXTRAS:-dev}"

if ! command -v uv >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --disable-pip-version-check uv >/dev/null 2>&1 || true
fi
UV=""
if command -v uv >/dev/null 2>&1; then UV=uv; elif "$PY" -m uv --version >/dev/null 2>&1; then UV="$PY -m uv"; fi

if [ ! -x .venv/bin/python ]; then
  if [ -n "$UV" ]; then $UV venv --quiet -p "$PY" .venv; else "$PY" -m venv .venv; fi
fi
LOCK=requirements/dev.lock
if [ "$EXTRAS" = dev ] && [ -f "$LOCK" ] && [ "${EDOWN_UNLOCKED:-0}" != 1 ] &&
   ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)'; then
  echo "the lock is for Python >= 3.12; this is $(.venv/bin/python --version): resolving pyproject.toml instead" >&2
  EDOWN_UNLOCKED=1
fi
if [ "$EXTRAS" = dev ] && [ -f "$LOCK" ] && [ "${EDOWN_UNLOCKED:-0}" != 1 ]; then
  # The lock first (every package pinned and hashed), then edown itself on top without resolving again.
  if [ -n "$UV" ]; then
    $UV pip install --quiet -p .venv/bin/python --require-hashes -r "$LOCK"
    $UV pip install --quiet -p .venv/bin/python --no-deps -e .
  else
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r "$LOCK"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  fi
elif [ -n "$UV" ]; then
  $UV pip install --quiet -p .venv/bin/python -e ".[${EXTRAS}]"
else
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
fi
echo "edown environment ready: $(.venv/bin/python --version) in .venv" >&2
