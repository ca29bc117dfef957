#!/usr/bin/env bash
# The GPU check: turns a machine with a CUDA GPU, Python 3.12 and a preinstalled CUDA torch
# (>= 2.6, with its triton) but no network into a verdict, in under 8 minutes on an H100-class
# GPU.
#
#   bash tools/gpu_check.sh --prepare DIR [--full] [--dry-run]   # on a networked machine
#   bash tools/gpu_check.sh --run DIR OUT                         # on the GPU machine
#   bash tools/gpu_check.sh --install DIR VENV                    # --run's install step alone
#
# --prepare DIR  downloads into DIR the wheels of everything else the check needs, for CPython
#     3.12 on manylinux x86_64 (tools/gpu_check/wheels.txt: mmengine, mmcv-lite, pytest, ...;
#     never torch or triton), and prints their size (at most 60 MB; --full adds numpy and
#     OpenCV for a machine without them, ~68 MB more). --dry-run prints the pip command and the
#     list instead. Nothing else is copied: the repository travels by itself.
# --run DIR OUT  on the GPU machine, each step under its own time limit (`timeout`), results
#     rewritten after every step (OUT/results.md, OUT/results.json), so a later step's failure
#     leaves them:
#       gpu        a CUDA device must be visible to python3's torch (else one line, exit 3);
#       install    a fresh venv seeing the machine's packages (python3 -m venv
#                  --system-site-packages), the wheels of DIR installed offline;
#       build      the csrc CUDA ops compiled for this GPU's arch (FORCE_CUDA=1,
#                  TORCH_CUDA_ARCH_LIST from its compute capability; a failure is recorded and
#                  the check goes on, the compiled backend's tests then skip);
#       tests      the gpu test tier (tests/gpu, pytest -m gpu; JUnit XML in OUT/junit.xml);
#       benchmark  tools/analysis/gpu_benchmark.py (OUT/benchmark.json);
#       profile    Nsight Compute on one stage-1 Triton call, where ncu exists (OUT/ncu.csv;
#                  informative: it does not decide the verdict).
#     Exit status 0 when every deciding step passed, else 1. All step output: OUT/log.txt.
#
# Environment: PYTHON (default python3: the interpreter that has torch), GPU_CHECK_VENV (default
# /tmp/mmtransnext-gpu-check-venv), GPU_CHECK_LIMIT_<STEP> (seconds: INSTALL 60, BUILD 100,
# TESTS 150, BENCHMARK 110, PROFILE 40), MAX_JOBS (default: the CPU count).
#
# Through the device tool (the wheel folder travels as an ignored path named in `carry`):
#   echo /.gpu_wheels/ >> "$(git rev-parse --git-path info/exclude)"
#   bash tools/gpu_check.sh --prepare .gpu_wheels
#   run(command='bash tools/gpu_check.sh --run .gpu_wheels $OUT', carry=['.gpu_wheels'])
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/tools/gpu_check
PY=${PYTHON:-python3}
# summarize.py needs only the standard library: any python3 runs it (also without the venv).
SPY=$(command -v python3 || echo "$PY")
TARGET_PYTHON=3.12
MAX_WHEELS_MB=60
PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_27_x86_64
           manylinux_2_28_x86_64)

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check: $*" >&2; exit 2; }

# --------------------------------------------------------------------------- --prepare
# wheel_specs FULL: NAME==VERSION of each line of wheels.txt ('full' ones only with FULL=1).
wheel_specs() {
  local full=$1
  "$PY" - "$HERE/wheels.txt" "$full" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1].rsplit('/', 1)[0])
from offline_install import read_list
for e in read_list(sys.argv[1]):
    if e.tag != 'full' or sys.argv[2] == '1':
        print(f'{e.name}=={e.version}')
EOF
}

prepare() {
  local dir=$1 full=$2 dry=$3
  local specs
  specs=$(wheel_specs "$full") || die "cannot read $HERE/wheels.txt"
  local cmd=("$PY" -m pip download --only-binary=:all: --python-version "$TARGET_PYTHON"
             --implementation cp)
  local p
  for p in "${PLATFORMS[@]}"; do cmd+=(--platform "$p"); done
  cmd+=(--no-deps --disable-pip-version-check -d "$dir")
  # shellcheck disable=SC2206
  cmd+=($specs)
  if [ "$dry" = 1 ]; then
    echo "gpu_check --prepare (dry run): target CPython $TARGET_PYTHON, linux x86_64;" \
         "not downloaded: torch, triton (the GPU machine's own)"
    echo "packages:"
    printf '  %s\n' $specs
    echo "command:"
    echo "  ${cmd[*]}"
    return 0
  fi
  mkdir -p "$dir" || die "cannot create $dir"
  "${cmd[@]}" || die "pip download failed (see above)"
  cp "$HERE/wheels.txt" "$dir/wheels.txt"
  local bytes mb
  bytes=$(du -cb "$dir"/*.whl | tail -1 | cut -f1)
  mb=$(( (bytes + 1048575) / 1048576 ))
  echo "gpu_check: $(ls "$dir"/*.whl | wc -l) wheels in $dir: $bytes bytes ($mb MiB)"
  if [ "$bytes" -gt $((MAX_WHEELS_MB * 1000000)) ]; then
    [ "$full" = 1 ] || die "the wheels take more than $MAX_WHEELS_MB MB"
    echo "gpu_check: with --full they exceed $MAX_WHEELS_MB MB (and the device tool's carry)"
  fi
  return 0
}

# --------------------------------------------------------------------------- --run
# make_venv VENV: a venv that sees the machine's packages. python3 may itself be a venv (the
# GPU machine's is): --system-site-packages then gives the base interpreter's packages, not
# its, so its site-packages are added by a .pth file (after the venv's own: what the check
# installs wins).
make_venv() {
  local venv=$1
  rm -rf "$venv"
  "$PY" -m venv --system-site-packages "$venv" 2>/dev/null || \
    "$PY" -m venv --system-site-packages --without-pip "$venv" || return 1
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    || return 1
  "$PY" -c 'import site, sys
if sys.prefix != sys.base_prefix:
    print("\n".join(site.getsitepackages()))' > "$site/mmtransnext_gpu_check_parent.pth"
}

# install DIR VENV: make the venv and install the wheels of DIR into it, offline.
install() {
  local dir=$1 venv=$2
  [ -d "$dir" ] || { echo "no wheel folder $dir (make it with --prepare)"; return 1; }
  make_venv "$venv" || { echo "could not create the venv $venv"; return 1; }
  local pip=("$venv/bin/python" -m pip)
  if ! "${pip[@]}" --version >/dev/null 2>&1; then
    local wheel
    wheel=$(ls "$dir"/pip-*.whl 2>/dev/null | head -1)
    [ -n "$wheel" ] || { echo "the venv has no pip and $dir has no pip wheel"; return 1; }
    pip=("$venv/bin/python" "$wheel/pip")
  fi
  "$venv/bin/python" "$HERE/offline_install.py" --wheels "$dir" -- "${pip[@]}"
}

# step NAME LIMIT COMMAND...: run a step under `timeout`, output to the log, its result to
# steps.tsv, then the summary. NOTE (a variable) is recorded with it.
STEP_NOTE=''
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS rc status
  echo "===== $name (limit ${limit}s): $*" >> "$LOG"
  # SIGINT first: pytest then stops and still writes its JUnit XML of the tests run so far.
  timeout --signal=INT --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  echo "===== $name: $status (exit $rc, $((SECONDS - start))s)" >> "$LOG"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$limit" \
    "${STEP_NOTE//$'\t'/ }" >> "$OUT/steps.tsv"
  STEP_NOTE=''
  "$SPY" "$HERE/summarize.py" "$OUT" >> "$LOG" 2>&1
  echo "[gpu_check] $name: $status ($((SECONDS - start))s)"
  [ "$status" = ok ]
}

run() {
  local dir=$1 out=$2
  local info
  info=$("$PY" - 2>/dev/null <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(1)
p = torch.cuda.get_device_properties(0)
print(f'{p.major}.{p.minor}\t{torch.cuda.device_count()} x {p.name}, compute capability '
      f'{p.major}.{p.minor}, torch {torch.__version__} (CUDA {torch.version.cuda}), '
      f'Python {sys.version.split()[0]}')
EOF
  ) || { echo "gpu_check: no CUDA GPU here ($PY: torch does not import or" \
              "torch.cuda.is_available() is False): nothing to check" >&2; exit 3; }
  local arch=${info%%$'\t'*} described=${info#*$'\t'}
  dir=$(cd "$dir" 2>/dev/null && pwd) || die "no wheel folder $1 (make it with --prepare)"
  mkdir -p "$out" || die "cannot create $out"
  OUT=$(cd "$out" && pwd)
  LOG=$OUT/log.txt
  rm -f "$OUT"/{steps.tsv,junit.xml,benchmark.json,ncu.csv,results.md,results.json}
  : > "$LOG"
  local venv=${GPU_CHECK_VENV:-/tmp/mmtransnext-gpu-check-venv}
  local vpy=$venv/bin/python
  echo "[gpu_check] $described"
  printf 'gpu\tok\t0\t0\t%s\n' "$described" > "$OUT/steps.tsv"

  STEP_NOTE="wheels from $dir into $venv"
  step install "${GPU_CHECK_LIMIT_INSTALL:-60}" bash "${BASH_SOURCE[0]}" --install "$dir" "$venv"

  # The ops are built into the source tree (editable install); the tests also import the
  # package from it (PYTHONPATH), so a failed build only takes the compiled backend away.
  cd "$ROOT" || die "cannot enter $ROOT"
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  export PATH=$venv/bin:$PATH  # its ninja, for torch's extension builder
  STEP_NOTE="TORCH_CUDA_ARCH_LIST=$arch"
  step build "${GPU_CHECK_LIMIT_BUILD:-100}" env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" \
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$vpy" -m pip install --no-build-isolation --no-deps \
    --no-index --disable-pip-version-check -e .

  # The kernels compiled, not interpreted; no JIT build of the ops if the build above failed.
  unset TRITON_INTERPRET
  export MMTRANSNEXT_JIT_BUILD=0 PYTHONUNBUFFERED=1
  step tests "${GPU_CHECK_LIMIT_TESTS:-150}" "$vpy" -m pytest tests/gpu -m gpu \
    --confcutdir tests/gpu -p no:cacheprovider -q -rs --junitxml "$OUT/junit.xml"

  local bench_limit=${GPU_CHECK_LIMIT_BENCHMARK:-110}
  step benchmark "$bench_limit" "$vpy" tools/analysis/gpu_benchmark.py \
    --out "$OUT/benchmark.json" --time-limit $((bench_limit * 3 / 4))

  local ncu
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu \
        2>/dev/null | head -1)
  if [ -n "$ncu" ]; then
    local report=/tmp/mmtransnext-gpu-check-ncu
    rm -f "$report.ncu-rep"
    STEP_NOTE="$ncu"
    step profile "${GPU_CHECK_LIMIT_PROFILE:-40}" bash -c \
      '"$1" --kernel-name regex:_attention --launch-count 3 --section SpeedOfLight \
         --section Occupancy --clock-control none --export "$2" -f "$3" \
         tools/gpu_check/profile_attention.py && \
       "$1" --import "$2.ncu-rep" --csv --page details > "$4"' \
      _ "$ncu" "$report" "$vpy" "$OUT/ncu.csv"
  else
    printf 'profile\tskipped\t0\t0\tno ncu on this machine\n' >> "$OUT/steps.tsv"
  fi
  "$SPY" "$HERE/summarize.py" "$OUT" --final
}

# --------------------------------------------------------------------------- arguments
[ $# -ge 1 ] || { usage >&2; exit 2; }
case $1 in
  -h|--help) usage; exit 0 ;;
  --prepare)
    shift
    dir='' full=0 dry=0
    while [ $# -gt 0 ]; do
      case $1 in
        --full) full=1 ;;
        --dry-run) dry=1 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$dir" ] || die "--prepare takes one folder"; dir=$1 ;;
      esac
      shift
    done
    [ -n "$dir" ] || die "--prepare needs a folder (see --help)"
    prepare "$dir" "$full" "$dry" ;;
  --run)
    [ $# -eq 3 ] || die "--run needs DIR OUT (see --help)"
    run "$2" "$3" ;;
  --install)
    [ $# -eq 3 ] || die "--install needs DIR VENV (see --help)"
    install "$2" "$3" ;;
  *) die "unknown argument $1 (see --help)" ;;
esac
