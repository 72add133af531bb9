#!/usr/bin/env bash
# Set up .venv and run the demo: search -> download -> stack against the embedded Earth Engine emulator.
# It writes edown-demo/ in the folder it is run from; arguments go to `edown demo` (see --help).
set -euo pipefail
ROOT=$(cd -P "$(dirname "$0")/.." && pwd)
EDOWN_EXTRAS="${EDOWN_EXTRAS:-test}" "$ROOT/scripts/dev-env.sh"
exec "$ROOT/.venv/bin/edown" demo "$@"
