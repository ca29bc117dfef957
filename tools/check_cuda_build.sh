#!/usr/bin/env bash
# Compile and link the CUDA build of the sliding-window ops (csrc/) on a machine without a GPU.
#
#   bash tools/check_cuda_build.sh
#
# 1. The project's environment (tools/install.sh; MMTRANSNEXT_VENV overrides it), whose torch
#    must be a CUDA build (the default torch==2.14.1 from PyPI is one). cuobjdump, to list the
#    device code, is added to it once (nvidia-cuda-cuobjdump, a few MB).
# 2. `FORCE_CUDA=1 python setup.py build_ext` into $MMTRANSNEXT_CUDA_CACHE/cuda-build, for one GPU
#    arch (TORCH_CUDA_ARCH_LIST, default 8.0) to keep nvcc's time down. Skipped when the sources,
#    build flags, torch and nvcc are those of the last successful build (content hash, so it
#    holds across clones); ninja rebuilds only what changed otherwise.
# 3. Imports the built module in that environment: it must load against torch's CUDA libraries
#    and register CPU and CUDA kernels for every op; its CPU kernels are run against the
#    PyTorch reference. CUDA kernels cannot run here; the device code compiled for the arch is
#    listed (cuobjdump) instead.
#
# Environment: MMTRANSNEXT_VENV, MMTRANSNEXT_CUDA_CACHE, TORCH_CUDA_ARCH_LIST, CUDA_HOME (default
# /usr/local/cuda), MAX_JOBS (default 2).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MMTRANSNEXT_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmtransnext}
VENV=${MMTRANSNEXT_VENV:-$ROOT/.venv}
BUILD=$CACHE/cuda-build
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-2}
PY=$VENV/bin/python
# torch warns that numpy is missing from that environment; nothing here needs numpy.
export PYTHONWARNINGS=${PYTHONWARNINGS:-"ignore:Failed to initialize NumPy"}

say() { echo "[check_cuda_build] $*" >&2; }
die() { echo "[check_cuda_build] ERROR: $*" >&2; exit 1; }

[ -x "$CUDA_HOME/bin/nvcc" ] || die "nvcc not found in CUDA_HOME=$CUDA_HOME (set CUDA_HOME)"
export PATH="$CUDA_HOME/bin:$PATH"
START=$SECONDS

# --- 1. the CUDA torch environment ------------------------------------------------------------
[ -x "$PY" ] || die "no environment at $VENV: run bash tools/install.sh first"
TORCH_INFO=$("$PY" -c "import sys, torch
sys.exit(torch.version.cuda is None or print(torch.__version__, 'CUDA', torch.version.cuda))" 2>/dev/null) \
  || die "torch in $VENV has no CUDA (torch.version.cuda is None): install a CUDA build (tools/install.sh does)"
if ! ls "$VENV"/lib/python3*/site-packages/nvidia/cuda_cuobjdump/bin/cuobjdump >/dev/null 2>&1; then
  TORCH_PIN="torch==$("$PY" -c "import torch; print(torch.__version__)")"
  "$PY" -m pip install -q --disable-pip-version-check "nvidia-cuda-cuobjdump>=13.0,<14" \
    -c <(echo "$TORCH_PIN") >&2 || say "cuobjdump could not be installed; listing kernel stubs instead"
fi
say "environment: $TORCH_INFO, nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), arch $TORCH_CUDA_ARCH_LIST"

# --- 2. build ----------------------------------------------------------------------------------
fingerprint() {
  {
    (cd "$ROOT" && find csrc -type f | sort | xargs sha1sum)
    sha1sum "$ROOT/setup.py" "$ROOT/mmtransnext/ops/ext_build.py" | cut -d' ' -f1
    echo "$TORCH_INFO $TORCH_CUDA_ARCH_LIST"
    "$CUDA_HOME/bin/nvcc" --version
  } | sha1sum | cut -d' ' -f1
}
STAMP=$BUILD/.mmtransnext-build
SO=$(ls "$BUILD"/lib/mmtransnext/_ext*.so 2>/dev/null | head -n1 || true)
if [ -n "$SO" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$(fingerprint)" ]; then
  say "build up to date: $SO"
else
  say "building with FORCE_CUDA=1 (MAX_JOBS=$MAX_JOBS) into $BUILD"
  rm -f "$STAMP"
  (cd "$ROOT" && FORCE_CUDA=1 MMTRANSNEXT_WITH_OPS=1 "$PY" setup.py -q build_ext \
      --build-lib "$BUILD/lib" --build-temp "$BUILD/temp") || die "the CUDA build failed"
  SO=$(ls "$BUILD"/lib/mmtransnext/_ext*.so | head -n1)
  fingerprint > "$STAMP"
fi

# --- 3. load, register, run the CPU kernels ----------------------------------------------------
"$PY" - "$SO" "$ROOT/mmtransnext/ops/sliding_window.py" <<'EOF' || die "the built module does not load or check out"
import importlib.machinery
import importlib.util
import sys

import torch

so_path, reference_path = sys.argv[1:]
loader = importlib.machinery.ExtensionFileLoader('mmtransnext._ext', so_path)
loader.exec_module(importlib.util.module_from_spec(
    importlib.util.spec_from_loader('mmtransnext._ext', loader)))
ops = ['sliding_window_qk', 'sliding_window_qk_backward', 'sliding_window_av',
       'sliding_window_av_backward']
for op in ops:
    for key in ('CPU', 'CUDA'):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f'mmtransnext::{op}', key), (op, key)
print(f'[check_cuda_build] loaded {so_path}: CPU and CUDA kernels registered for {len(ops)} ops '
      f'(torch.cuda.is_available() = {torch.cuda.is_available()})', file=sys.stderr)

# The CPU kernels of this build share every line of arithmetic with its CUDA kernels.
spec = importlib.util.spec_from_file_location('reference', reference_path)
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)
q, k, v = torch.randn(3, 2, 2, 35, 8, dtype=torch.float64).unbind(0)
rpb = torch.randn(2, 25, dtype=torch.float64)
attn = torch.ops.mmtransnext.sliding_window_qk(q, k, rpb, 5, 7, 5)
torch.testing.assert_close(attn, reference.sliding_window_qk(q, k, rpb, (5, 7), 5))
weights = attn.softmax(-1)
torch.testing.assert_close(torch.ops.mmtransnext.sliding_window_av(weights, v, 5, 7, 5),
                           reference.sliding_window_av(weights, v, (5, 7), 5))
print('[check_cuda_build] CPU kernels of the CUDA build match the reference', file=sys.stderr)
EOF

# --- device code in the module (compiled, never executed here) ---------------------------------
CUOBJDUMP=$(ls "$VENV"/lib/python3*/site-packages/nvidia/*/bin/cuobjdump \
  "$VENV"/lib/python3*/site-packages/nvidia/cuda_cuobjdump/bin/cuobjdump 2>/dev/null | head -n1 || true)
if [ -n "$CUOBJDUMP" ]; then
  say "device code in $(basename "$SO"):"
  "$CUOBJDUMP" --list-elf "$SO" | sed 's/^/    /' >&2
  "$CUOBJDUMP" --dump-resource-usage "$SO" 2>/dev/null | sed -n 's/^ *Function \([^:]*\):.*/\1/p' \
    | c++filt | sed 's/(anonymous namespace):://; s/^void //; s/(.*//' | sort -u \
    | sed 's/^/    kernel /' >&2 || true
else
  say "cuobjdump not found; kernel stubs in the module:"
  nm -C "$SO" | grep -o '__device_stub__[A-Za-z_]*' | sort -u | sed 's/^/    /' >&2 || true
fi
say "OK in $((SECONDS - START)) s"
