#!/usr/bin/env bash
# Set up .venv and run the demo: search -> download -> stack against the embedded Earth Engine emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
EDOWN_EXTRAS="${EDOWN_EXTRAS:-test}" ./scripts/dev-env.sh
exec .venv/bin/edown demo "$@"
