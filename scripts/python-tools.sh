# Sourced by scripts/dev-env.sh and scripts/lock.sh: which Python and which uv the project's scripts use.

pick_python() {
  # Prefers python3.12 (newest zarr/rasterio wheels need >= 3.12), then 3.13, then python3 (>= 3.10).
  # pyenv installs shims for every version, but a shim only runs when that version is selected: look
  # at pyenv's own interpreters too, and keep the first candidate that actually runs. The project's own
  # .venv is no candidate (it is first on PATH once activated, and has neither pip nor uv).
  local root="${PYENV_ROOT:-$HOME/.pyenv}" own_venv
  own_venv="$(pwd -P)/.venv"
  for candidate in "${EDOWN_PYTHON:-}" python3.12 "$root"/versions/3.12*/bin/python3.12 python3.13 \
                   "$root"/versions/3.13*/bin/python3.13 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import os, sys; sys.exit(0 if sys.version_info >= (3, 10) and os.path.realpath(sys.prefix) != sys.argv[1] else 1)' "$own_venv" 2>/dev/null; then
      "$candidate" -c 'import sys; print(sys.executable)'
      return 0
    fi
  done
  echo "edown needs Python >= 3.10; none found (set EDOWN_PYTHON)" >&2
  return 1
}

find_uv() {
  # The uv command to use (installed into Python $1 when missing), or nothing when it cannot be had.
  local py="$1"
  if ! command -v uv >/dev/null 2>&1 && ! "$py" -m uv --version >/dev/null 2>&1; then
    "$py" -m pip install --quiet --disable-pip-version-check uv >/dev/null 2>&1 || true
  fi
  if command -v uv >/dev/null 2>&1; then echo uv
  elif "$py" -m uv --version >/dev/null 2>&1; then echo "$py -m uv"
  fi
}
