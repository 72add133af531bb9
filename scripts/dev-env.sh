#!/usr/bin/env bash
# Create (or update) the project's virtualenv in .venv with edown installed editable plus dev tools.
# Python and uv are chosen by scripts/python-tools.sh (3.12 preferred; uv when it can be had, plain pip
# otherwise).
# The dev tools come from requirements/dev.lock (exact versions, hash-checked; scripts/lock.sh makes it),
# so every checkout and CI test the same packages. EDOWN_UNLOCKED=1 resolves pyproject.toml's ranges instead
# (the newest allowed versions, as a user gets); other EDOWN_EXTRAS are always resolved that way.
set -euo pipefail
cd -P "$(dirname "$0")/.."

# shellcheck source=scripts/python-tools.sh
source scripts/python-tools.sh
PY=$(pick_python)
EXTRAS="${EDOWN_EXTRAS:-dev}"
UV=$(find_uv "$PY")

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
