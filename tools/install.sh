#!/usr/bin/env bash
# Set up (or check) the virtual environment mmtransnext runs in. Idempotent: when everything is
# installed and nothing in requirements/ or setup.py changed, it returns in a few seconds.
#
#   bash tools/install.sh            # creates ./.venv (override with MMTRANSNEXT_VENV=DIR)
#
# Order matters: torch first (kept if already installed, e.g. a CUDA build), then the build
# tools, then mmcv 2.1.0 built from source WITH its ops against that torch (pip caches the built
# wheel, so only the first install on a machine compiles: ~15 min on 2 cores), then the rest.
# torch is pinned (a constraints file) for every later step, so nothing replaces it under mmcv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMTRANSNEXT_VENV:-$ROOT/.venv}
TORCH_SPEC=${MMTRANSNEXT_TORCH:-torch==2.14.1}
MMCV_SPEC=mmcv==2.1.0
PY="$VENV/bin/python"
STAMP="$VENV/.mmtransnext-install"
WHEEL_CACHE=${MMTRANSNEXT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmtransnext/wheels}

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
# The public version (no "+cu130"-style local label): torchvision's "torch>=2.14" must still
# match it, and "==2.14.1" keeps whichever local build of 2.14.1 is installed.
echo "torch==${TORCH_VERSION%%+*}" > "$CONSTRAINTS"
# numpy 1.x and opencv < 4.12: what the installed mmcv wheel and mmdet/mmseg were built for;
# the optional extras (onnx, mmpretrain) must not upgrade them. setuptools as in build.txt:
# openmim's newest dependencies (openxlab) would downgrade it to 60.
printf 'numpy<2\nopencv-python<4.12\nsetuptools>=77,<81\n' >> "$CONSTRAINTS"

"${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/build.txt" \
  || die "could not install the build tools (requirements/build.txt)"

if ! ops_ok; then
  if "$PY" -c "import mmcv" 2>/dev/null; then
    say "mmcv is installed without its compiled ops: rebuilding"
    "${PIP[@]}" uninstall -q -y mmcv
  fi
  # The wheel is kept in a folder named after the exact torch build and Python it was compiled
  # against, never in pip's cache (pip would hand a wheel built against another torch to this
  # one: its ops then fail to load with undefined symbols).
  MMCV_WHEELS=$WHEEL_CACHE/mmcv-2.1.0-torch-${TORCH_VERSION}-$("$PY" -c 'import sys; print("py%d%d" % sys.version_info[:2])')
  if ! ls "$MMCV_WHEELS"/mmcv-*.whl >/dev/null 2>&1; then
    say "building $MMCV_SPEC with ops against torch $TORCH_VERSION into $MMCV_WHEELS (once per torch build: ~15 min on 2 cores)"
    SRC=$(mktemp -d)
    "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$SRC" "$MMCV_SPEC" \
      || die "could not download the $MMCV_SPEC source"
    tar -xzf "$SRC"/mmcv-*.tar.gz -C "$SRC"
    # mmcv 2.1.0 compiles its ops as C++17; torch >= 2.14's headers require C++20.
    if "$PY" -c "import sys, torch; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 14))"; then
      sed -i "s/'-std=c++17'/'-std=c++20'/g" "$SRC"/mmcv-*/setup.py
    fi
    mkdir -p "$MMCV_WHEELS.tmp"
    (cd "$SRC"/mmcv-*/ && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "${PIP[@]}" wheel -q --no-cache-dir --no-deps --no-build-isolation -c "$CONSTRAINTS" \
      -w "$MMCV_WHEELS.tmp" .) || die "building $MMCV_SPEC failed (see pip output above)"
    rm -rf "$SRC"
    rm -rf "$MMCV_WHEELS" && mv "$MMCV_WHEELS.tmp" "$MMCV_WHEELS"
  fi
  "${PIP[@]}" install -q -c "$CONSTRAINTS" "$(ls "$MMCV_WHEELS"/mmcv-*.whl | head -n1)" \
    || die "installing $MMCV_SPEC from $MMCV_WHEELS failed"
  ops_ok || die "$MMCV_SPEC installed but 'from mmcv.ops import nms, RoIAlign,
MultiScaleDeformableAttention' fails: it was built without ops. Remove $MMCV_WHEELS and run
this script again."
fi

say "installing requirements/runtime.txt, the optional extras, docs.txt and tests.txt"
# classification.txt (mmpretrain, torchvision) and deploy.txt (onnx, onnxruntime, onnxscript)
# are optional for users (pip extras); the test environment has them, and docs.txt (Sphinx,
# MyST) for tests/test_docs.py's build of docs/.
"${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/runtime.txt" \
  -r "$ROOT/requirements/classification.txt" -r "$ROOT/requirements/deploy.txt" \
  -r "$ROOT/requirements/docs.txt" -r "$ROOT/requirements/tests.txt" \
  || die "could not install the requirements"

say "installing mmtransnext (editable; compiles the ops in csrc/ with ninja)"
# csrc/'s CUDA kernels only with a visible GPU (or FORCE_CUDA=1 / TORCH_CUDA_ARCH_LIST): see
# setup.py; tools/check_cuda_build.sh compiles them on a machine without one.
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-build-isolation --no-deps -e "$ROOT" \
  || die "pip install -e . failed"
ext_ok || die "mmtransnext installed but its compiled ops (mmtransnext._ext) do not import"

for optional in torchvision timm; do
  # Either may come with a user's own packages; pinned to this torch it must load beside it.
  if "$PY" -m pip show -q "$optional" >/dev/null 2>&1 && ! "$PY" -c "import $optional" 2>/dev/null; then
    die "$optional is installed in $VENV but does not import beside torch $TORCH_VERSION; uninstall it"
  fi
done
[ "$("$PY" -c "import torch; print(torch.__version__)")" = "$TORCH_VERSION" ] \
  || die "torch changed during the install"
"$PY" -c "import mmtransnext, mmdet, mmseg" || die "importing mmtransnext/mmdet/mmseg failed"
ops_ok || die "mmcv ops are not importable"
fingerprint > "$STAMP"
say "ready: $VENV"
