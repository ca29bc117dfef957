#!/usr/bin/env bash
# A virtual environment made once per machine and reused: the environments of other torch /
# triton / numpy versions that the compatibility tests and the GPU-check rehearsal run in.
#
#   bash tools/cached_venv.sh NAME [--python PYTHON] -- PIP_INSTALL_ARGS...
#
# Prints the environment's python on its last line of stdout (pip's output goes to stderr).
# The environment lives in ${MMTRANSNEXT_VENV_CACHE:-~/.cache/mmtransnext/venvs}/NAME and is
# made again only when PIP_INSTALL_ARGS or PYTHON change (a stamp holds them) or it no longer
# runs. Concurrent calls for one NAME wait for each other (flock).
set -euo pipefail

die() { echo "[cached_venv] ERROR: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: cached_venv.sh NAME [--python PYTHON] -- PIP_INSTALL_ARGS..."
NAME=$1; shift
case $NAME in ''|*/*|.*) die "NAME must be a plain folder name, got '$NAME'";; esac
BASE_PY=python3
if [ "${1:-}" = --python ]; then
  [ $# -ge 2 ] || die "--python needs a value"
  BASE_PY=$2; shift 2
fi
[ "${1:-}" = -- ] || die "expected -- before the pip arguments"
shift
[ $# -ge 1 ] || die "no pip arguments: name at least one package"
command -v "$BASE_PY" >/dev/null || die "python '$BASE_PY' not found"

CACHE=${MMTRANSNEXT_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmtransnext/venvs}
VENV=$CACHE/$NAME
mkdir -p "$CACHE"
exec 9>"$CACHE/.$NAME.lock"
flock 9

WANT=$(printf '%s\n' "$("$BASE_PY" -c 'import sys; print(sys.version)')" "$@")
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.stamp" 2>/dev/null)" = "$WANT" ] && \
    "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  echo "$VENV/bin/python"
  exit 0
fi
echo "[cached_venv] making $VENV: pip install $*" >&2
rm -rf "$VENV"
"$BASE_PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2 \
  || { rm -rf "$VENV"; die "pip install $* failed"; }
printf '%s\n' "$WANT" > "$VENV/.stamp"
echo "$VENV/bin/python"
