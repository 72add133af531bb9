#!/usr/bin/env bash
# Set up .venv and run every check CI runs: ruff, mypy, and the test suite (SLURM tests included when a
# single-node SLURM can be started here; see scripts/slurm-up.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/dev-env.sh

echo "== ruff" >&2
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
echo "== mypy" >&2
.venv/bin/mypy
echo "== docs (mkdocs --strict)" >&2
.venv/bin/mkdocs build --strict --quiet --site-dir "${TMPDIR:-/tmp}/edown-site"
echo "== pytest" >&2
if [ "${EDOWN_SKIP_SLURM:-0}" != "1" ] && [ -x scripts/slurm-up.sh ]; then
  if ./scripts/slurm-up.sh >/tmp/edown-slurm-up.log 2>&1; then
    export EDOWN_SLURM_PARTITION="${EDOWN_SLURM_PARTITION:-edown}"
  else
    echo "SLURM could not be started (see /tmp/edown-slurm-up.log); SLURM tests will fail loudly" >&2
    export EDOWN_SLURM_PARTITION="${EDOWN_SLURM_PARTITION:-edown}"
  fi
fi
.venv/bin/python -m pytest "$@"
