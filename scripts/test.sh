#!/usr/bin/env bash
# Set up .venv and run every check CI runs: ruff, mypy, the docs build and the test suite (arguments go
# to pytest).
#
# The dask-slurm tests need a running SLURM. When none runs and one can be started here (root, with SLURM
# installed or apt-get to install it), scripts/slurm-up.sh starts a single-node one after saying what it
# installs, writes and starts; it is left running for the next run (scripts/slurm-down.sh stops it).
# Otherwise, or with EDOWN_SKIP_SLURM=1, those tests are skipped with the reason, and the end of the run
# repeats every skip. EDOWN_REQUIRE_SLURM=1 (CI) makes a SLURM test that cannot run a failure instead.
set -euo pipefail
cd -P "$(dirname "$0")/.."
./scripts/dev-env.sh

echo "== ruff" >&2
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
echo "== mypy" >&2
.venv/bin/mypy
echo "== docs (mkdocs --strict)" >&2
.venv/bin/mkdocs build --strict --quiet --site-dir "${TMPDIR:-/tmp}/edown-site"

echo "== SLURM (for the dask-slurm tests)" >&2
if [ "${EDOWN_SKIP_SLURM:-0}" = "1" ]; then
  slurm="not started: EDOWN_SKIP_SLURM=1"
elif plan=$(./scripts/slurm-up.sh --plan); then
  echo "scripts/slurm-up.sh will:" >&2
  echo "$plan" | sed 's/^/  - /' >&2
  slurm_log="${TMPDIR:-/tmp}/edown-slurm-up.log"
  if ./scripts/slurm-up.sh >"$slurm_log" 2>&1; then
    tail -n 1 "$slurm_log" >&2
    slurm="running, left running for the next run: stop it with scripts/slurm-down.sh"
  else
    tail -n 20 "$slurm_log" >&2
    slurm="scripts/slurm-up.sh failed (log: $slurm_log)"
  fi
else
  slurm="$plan"
fi
echo "SLURM: $slurm" >&2
export EDOWN_SLURM_PARTITION="${EDOWN_SLURM_PARTITION:-edown}"

echo "== pytest" >&2
report=$(mktemp "${TMPDIR:-/tmp}/edown-pytest.XXXXXX")
trap 'rm -f "$report"' EXIT
status=0
.venv/bin/python -m pytest -ra "$@" 2>&1 | tee "$report" || status=${PIPESTATUS[0]}

echo "== skipped" >&2
if grep -E '^SKIPPED' "$report" >&2; then
  echo "(pytest's reasons above; the dask-slurm tests need SLURM: $slurm)" >&2
else
  echo "nothing" >&2
fi
exit "$status"
