#!/usr/bin/env bash
# Regenerate requirements/dev.lock: the exact versions (with hashes) that scripts/dev-env.sh and CI install,
# so every checkout tests against the same packages; pyproject.toml keeps the ranges users get.
# Run it after changing dependencies in pyproject.toml. Versions already in the lock are kept while
# pyproject.toml still allows them, so the lock changes only where pyproject.toml did.
#   scripts/lock.sh            update the lock for pyproject.toml
#   scripts/lock.sh --upgrade  move every pin to the newest allowed version
#   scripts/lock.sh --check    exit 1 (showing the difference) if the lock is not what pyproject.toml gives
# Needs uv (installed like scripts/dev-env.sh does when missing) and the package index.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/python-tools.sh
source scripts/python-tools.sh
read -r -a UV <<<"$(find_uv "$(pick_python)")"
if [ "${#UV[@]}" -eq 0 ]; then echo "scripts/lock.sh needs uv and could not install it: pip install uv" >&2; exit 2; fi

LOCK=requirements/dev.lock
compile() {
  # --universal: one lock for every platform (markers where they differ); Python 3.12 is what dev-env uses.
  "${UV[@]}" pip compile pyproject.toml --extra dev --python-version 3.12 --universal --generate-hashes \
    --quiet --custom-compile-command "scripts/lock.sh" "$@"
}

case "${1:-}" in
  "") compile -o "$LOCK" ;;
  --upgrade) compile --upgrade -o "$LOCK" ;;
  --check)
    fresh=$(mktemp)
    trap 'rm -f "$fresh"' EXIT
    cp "$LOCK" "$fresh"
    compile -o "$fresh"
    if ! diff -u "$LOCK" "$fresh"; then
      echo "$LOCK is stale: run scripts/lock.sh and commit the result" >&2
      exit 1
    fi
    echo "$LOCK matches pyproject.toml" >&2
    ;;
  *) echo "usage: scripts/lock.sh [--upgrade | --check]" >&2; exit 2 ;;
esac
