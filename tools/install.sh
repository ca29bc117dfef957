#!/usr/bin/env bash
# Set up (or check) the virtual environment mmtransnext runs in. Idempotent: when everything is
# installed and nothing in requirements/ or setup.py changed, it returns in a few seconds.
#
#   bash tools/install.sh            # creates ./.venv (override with MMTRANSNEXT_VENV=DIR)
#
# Order matters: torch first (kept if already installed, e.g. a CUDA build), then the build
# tools, then mmcv 2.1.0 built from source WITH its ops against that torch (pip caches the built
# wheel, so only the first install on a machine compiles: ~15 min on 2 cores), then the rest.
# timm and torchvision are never installed: they would replace torch and break mmcv's ABI.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMTRANSNEXT_VENV:-$ROOT/.venv}
TORCH_SPEC=${MMTRANSNEXT_TORCH:-torch==2.13.0}
MMCV_SPEC=mmcv==2.1.0
PY="$VENV/bin/python"
STAMP="$VENV/.mmtransnext-install"

say() { echo "[install] $*" >&2; }
die() { echo "[install] ERROR: $*" >&2; exit 1; }

fingerprint() {
  cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" "$ROOT/pyproject.toml" \
    "$ROOT/tools/install.sh" "$ROOT/mmtransnext/ops/ext_build.py" \
    $(find "$ROOT/csrc" -type f 2>/dev/null | sort) | sha1sum | cut -d' ' -f1
}

ops_ok() {
  "$PY" - <<'EOF' 2>/dev/null
from mmcv.ops import nms, RoIAlign, MultiScaleDeformableAttention  # noqa: F401
EOF
}

ext_ok() {
  # The compiled sliding-window ops, unless the user opted out of building them.
  [ "${MMTRANSNEXT_WITH_OPS:-1}" = "0" ] || "$PY" -c "import mmtransnext._ext" 2>/dev/null
}

ready() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ] && \
    "$PY" -c "import mmtransnext, mmdet, mmseg, pytest" 2>/dev/null && ops_ok && ext_ok
}

if [ -x "$PY" ] && ready; then
  exit 0
fi

if [ ! -x "$PY" ]; then
  BASE_PY=${PYTHON:-}
  if [ -z "$BASE_PY" ]; then
    for cand in python3.11 python3; do
      if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        BASE_PY=$cand; break
      fi
    done
  fi
  [ -n "$BASE_PY" ] || die "Python 3.11 not found (set PYTHON=/path/to/python3.11)"
  say "creating virtual environment $VENV"
  "$BASE_PY" -m venv "$VENV"
fi

PIP=("$PY" -m pip --disable-pip-version-check)

if ! "$PY" -c "import torch" 2>/dev/null; then
  say "installing $TORCH_SPEC"
  "${PIP[@]}" install -q "$TORCH_SPEC" || die "could not install $TORCH_SPEC"
fi
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__)")
say "torch $TORCH_VERSION"
# Pin the installed torch so that no later step replaces it.
CONSTRAINTS="$VENV/.mmtransnext-constraints.txt"
echo "torch==${TORCH_VERSION}" > "$CONSTRAINTS"

"${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/build.txt" \
  || die "could not install the build tools (requirements/build.txt)"

if ! ops_ok; then
  if "$PY" -c "import mmcv" 2>/dev/null; then
    say "mmcv is installed without its compiled ops: rebuilding"
    "${PIP[@]}" uninstall -q -y mmcv
  fi
  say "building $MMCV_SPEC with ops against torch $TORCH_VERSION (first time: ~15 min on 2 cores)"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" install -q -c "$CONSTRAINTS" \
    --no-build-isolation "$MMCV_SPEC" || die "building $MMCV_SPEC failed (see pip output above)"
  ops_ok || die "$MMCV_SPEC installed but 'from mmcv.ops import nms, RoIAlign,
MultiScaleDeformableAttention' fails: it was built without ops. Remove it from pip's cache
('pip cache remove mmcv') and run this script again."
fi

say "installing requirements/runtime.txt and requirements/tests.txt"
"${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/runtime.txt" \
  -r "$ROOT/requirements/tests.txt" || die "could not install the runtime requirements"

say "installing mmtransnext (editable; compiles the ops in csrc/ with ninja)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-build-isolation --no-deps -e "$ROOT" \
  || die "pip install -e . failed"
ext_ok || die "mmtransnext installed but its compiled ops (mmtransnext._ext) do not import"

for forbidden in timm torchvision; do
  if "$PY" -c "import $forbidden" 2>/dev/null; then
    die "$forbidden is installed in $VENV: it replaces torch and breaks mmcv's ops; uninstall it"
  fi
done
[ "$("$PY" -c "import torch; print(torch.__version__)")" = "$TORCH_VERSION" ] \
  || die "torch changed during the install"
"$PY" -c "import mmtransnext, mmdet, mmseg" || die "importing mmtransnext/mmdet/mmseg failed"
ops_ok || die "mmcv ops are not importable"
fingerprint > "$STAMP"
say "ready: $VENV"
