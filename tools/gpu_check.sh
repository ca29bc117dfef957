#!/usr/bin/env bash
# The GPU check: turns a machine with a CUDA GPU, Python 3.12 and a preinstalled CUDA torch with
# its triton (the device's torch 2.11 and triton 3.6) but no network into findings and a
# verdict, within a time budget (6.5 minutes by default, for an 8-minute slot on an H100).
#
#   bash tools/gpu_check.sh --prepare DIR [--full] [--dry-run]   # on a networked machine
#   bash tools/gpu_check.sh --run DIR OUT                         # on the GPU machine
#   bash tools/gpu_check.sh --rehearse [WORK]                     # here: every step but the GPU
#   bash tools/gpu_check.sh --install DIR VENV                    # --run's install step alone
#
# --prepare DIR  downloads into DIR the wheels of everything else the check needs, for CPython
#     3.12 on manylinux x86_64 (tools/gpu_check/wheels.txt: mmengine, mmcv-lite, pytest, ...;
#     never torch or triton), and prints their size (at most 60 MB; --full adds numpy and
#     OpenCV for a machine without them, ~68 MB more). --dry-run prints the pip command and the
#     list instead. Nothing else is copied: the repository travels by itself.
# --run DIR OUT  on the GPU machine. Steps, correctness first, each under its own time limit
#     (`timeout`) and all within the budget:
#       gpu        a CUDA device must be visible to python3's torch (else one line, exit 3);
#       install    a fresh venv seeing the machine's packages (python3 -m venv
#                  --system-site-packages), the wheels of DIR installed offline;
#       build      the csrc CUDA ops compiled for this GPU's arch (FORCE_CUDA=1,
#                  TORCH_CUDA_ARCH_LIST from its compute capability); skipped, and said so,
#                  when its limit no longer fits the budget before the sanitizer and the tests
#                  (the compiled backend's tests then skip);
#       sanitizer  compute-sanitizer memcheck, then racecheck, on a small forward and backward
#                  of every Triton kernel and the compiled window ops
#                  (tools/gpu_check/sanitize_ops.py);
#       tests      each file of the gpu tier (tests/gpu) in its own pytest process, so that a
#                  fault in one does not poison the next (JUnit of all in OUT/junit.xml);
#       benchmark  tools/analysis/gpu_benchmark.py (OUT/benchmark.json; informative);
#       profile    Nsight Compute on one stage-1 Triton call, where ncu exists (OUT/ncu.csv;
#                  informative).
#     Each step ends passed, failed, timed out or skipped; those it never started are "not
#     reached". OUT/results.md and OUT/results.json are rewritten after every step, so a step
#     cut by its limit, or the whole check killed, leaves what ran before. The verdict is
#     decided by the correctness steps (gpu to tests): PASS, FAIL (one failed) or INCOMPLETE
#     (none failed, one timed out or was not reached). Exit status 0 on PASS, else 1. All step
#     output: OUT/log.txt. At most 7 files in OUT (the device tool returns 8).
# --rehearse [WORK]  every step of --run that needs no GPU, against a stand-in for the device
#     image (tools/cached_venv.sh: Python 3.12, the device's torch 2.11.0, triton 3.6.0, numpy
#     2.5.2, OpenCV), in WORK (default /tmp/mmtransnext-gpu-rehearsal): --prepare WORK/wheels,
#     the offline install from them (pip --no-index), imports of mmtransnext, mmengine and
#     mmcv-lite under numpy 2, collection of the gpu tier and of the sanitizer script, the
#     Triton kernels compiled for sm_90 with triton 3.6 (tools/check_triton_build.py --arch 90)
#     and the CUDA ops built for sm_90 (tools/check_cuda_build.sh); the GPU steps are recorded
#     "not reached: no GPU" in WORK/out/results.md, and what the rehearsal cannot reach is
#     printed. Needs the network (PyPI) and nvcc (CUDA_HOME). Exit status 0 when every step
#     passed.
#
# Environment: PYTHON (default python3: the interpreter that has torch), GPU_CHECK_VENV (default
# /tmp/mmtransnext-gpu-check-venv), GPU_CHECK_BUDGET (seconds for all steps, default 390),
# GPU_CHECK_LIMIT_<STEP> (seconds: INSTALL 30, BUILD 90, SANITIZER 70 for both tools, TESTS
# 140 for all files, BENCHMARK 40, PROFILE 20), GPU_CHECK_BUILD=0 (skip the build),
# GPU_CHECK_SANITIZER=0 (skip the sanitizer), MAX_JOBS (default: the CPU count),
# TRITON_CACHE_DIR (default /tmp/mmtransnext-gpu-check-triton: the sanitizer's compiles serve
# the tests); --rehearse: GPU_CHECK_STANDIN_BASE (the stand-in's Python 3.12, default
# /root/.pyenv/versions/3.12.1/bin/python3.12).
#
# Through the device tool (the wheel folder travels as an ignored path named in `carry`):
#   echo /.gpu_wheels/ >> "$(git rev-parse --git-path info/exclude)"
#   bash tools/gpu_check.sh --prepare .gpu_wheels
#   run(command='bash tools/gpu_check.sh --run .gpu_wheels $OUT', carry=['.gpu_wheels'],
#       timeout_s=480)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/tools/gpu_check
PY=${PYTHON:-python3}
T0=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-390}
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
  PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$HERE/wheels.txt" "$full" <<'EOF'
import sys
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

# record NAME STATUS SECONDS LIMIT NOTE: one line of OUT/steps.tsv ('planned' lines list what
# is to come: summarize.py marks those without a result "not reached").
record() {
  local note=${5//$'\t'/ }
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${note//$'\n'/ }" >> "$OUT/steps.tsv"
}

summarize() { "$SPY" "$HERE/summarize.py" "$OUT" --mode "$MODE" --junit-dir "$WORK/junit" "$@"; }

# left: seconds left of the budget.
left() { echo $(( BUDGET - (SECONDS - T0) )); }

# step NAME LIMIT COMMAND...: run a step under `timeout` (its limit cut to what is left of the
# budget; not started with less than 5 s of the budget or a limit under 1 s left), output to
# the log, its result to steps.tsv, then the summary. NOTE (a variable) is recorded with it.
STEP_NOTE=''
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS rc status remaining
  remaining=$(left)
  [ "$remaining" -lt "$limit" ] && limit=$remaining
  if [ "$remaining" -lt 5 ] || [ "$limit" -lt 1 ]; then
    local why="the check's ${BUDGET} s budget was spent"
    [ "$remaining" -lt 5 ] || why="the time of its group (sanitizer, tests) was spent"
    record "$name" 'not reached' 0 0 "$why"
    STEP_NOTE=''
    summarize >> "$LOG" 2>&1
    echo "[gpu_check] $name: not reached ($why)"
    return 1
  fi
  echo "===== $name (limit ${limit}s): $*" >> "$LOG"
  # SIGINT first: pytest then stops and still writes its JUnit XML of the tests run so far.
  timeout --signal=INT --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=passed ;;
    124|137) status='timed out' ;;
    87) status=skipped  # a tool refused the machine (the sanitizer)
        STEP_NOTE="${STEP_NOTE:+$STEP_NOTE; }refused this machine (log.txt)" ;;
    *) status=failed
       [ "$rc" -gt 128 ] && STEP_NOTE="${STEP_NOTE:+$STEP_NOTE; }killed by signal $((rc - 128))" ;;
  esac
  echo "===== $name: $status (exit $rc, $((SECONDS - start))s)" >> "$LOG"
  record "$name" "$status" "$((SECONDS - start))" "$limit" "$STEP_NOTE"
  STEP_NOTE=''
  summarize >> "$LOG" 2>&1
  echo "[gpu_check] $name: $status ($((SECONDS - start))s)"
  [ "$status" = passed ]
}

# skip NAME WHY: a step deliberately not run.
skip() {
  record "$1" skipped 0 0 "$2"
  summarize >> "$LOG" 2>&1
  echo "[gpu_check] $1: skipped ($2)"
}

# find_tool NAME: a CUDA tool on PATH or in the usual folders.
find_tool() {
  command -v "$1" 2>/dev/null || ls /usr/local/cuda/bin/"$1" /usr/local/cuda/"$1"/"$1" \
    /opt/nvidia/nsight-compute/*/"$1" 2>/dev/null | head -1
}

# sanitize TOOL SANITIZER VPY: compute-sanitizer TOOL on tools/gpu_check/sanitize_ops.py; fails
# on any error it reports (exit 86) or when the script did not finish; exit 87 when the
# sanitizer refuses the machine (as on gVisor).
sanitize() {
  local tool=$1 sanitizer=$2 vpy=$3 log rc
  log=$WORK/sanitizer-$tool.log
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" --error-exitcode 86 \
    --print-limit 20 "$vpy" "$HERE/sanitize_ops.py" > "$log" 2>&1
  rc=$?
  cat "$log"
  if grep -q 'Device not supported\|not supported on this platform' "$log"; then
    echo "gpu_check: compute-sanitizer refused this device"
    return 87
  fi
  grep -q '^sanitize_ops: done' "$log" || { [ "$rc" -ne 0 ] || rc=1; }
  return "$rc"
}

# sanitizer_step TOOL LIMIT SANITIZER VPY: the step sanitizer:TOOL, its error count and first
# reports (kernel and access) in its note.
sanitizer_step() {
  local tool=$1 limit=$2 sanitizer=$3 vpy=$4 rc
  STEP_NOTE="$sanitizer --tool $tool"
  step "sanitizer:$tool" "$limit" bash "${BASH_SOURCE[0]}" --sanitize "$tool" "$sanitizer" \
    "$vpy" "$WORK"
  rc=$?
  findings "sanitizer:$tool" '^========= \(ERROR SUMMARY\|Invalid\|Race\|Error\|Program hit\)' \
    's/^========= //'
  return "$rc"
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
  MODE=run
  WORK=${GPU_CHECK_WORK:-/tmp/mmtransnext-gpu-check-work}
  rm -rf "$WORK" && mkdir -p "$WORK/junit" || die "cannot create $WORK"
  rm -f "$OUT"/{steps.tsv,junit.xml,benchmark.json,ncu.csv,results.md,results.json}
  : > "$LOG"
  local venv=${GPU_CHECK_VENV:-/tmp/mmtransnext-gpu-check-venv}
  local vpy=$venv/bin/python
  local l_install=${GPU_CHECK_LIMIT_INSTALL:-30} l_build=${GPU_CHECK_LIMIT_BUILD:-90}
  local l_sanitizer=${GPU_CHECK_LIMIT_SANITIZER:-70} l_tests=${GPU_CHECK_LIMIT_TESTS:-140}
  local l_bench=${GPU_CHECK_LIMIT_BENCHMARK:-40} l_profile=${GPU_CHECK_LIMIT_PROFILE:-20}
  local files f
  files=$(test_files)
  echo "[gpu_check] $described; budget ${BUDGET}s"
  {
    printf 'gpu\tpassed\t0\t0\t%s\n' "$described"
    printf 'install\tplanned\t0\t%s\t\n' "$l_install"
    printf 'build\tplanned\t0\t%s\t\n' "$l_build"
    printf 'sanitizer:memcheck\tplanned\t0\t%s\t\n' "$l_sanitizer"
    printf 'sanitizer:racecheck\tplanned\t0\t%s\t\n' "$l_sanitizer"
    for f in $files; do
      printf 'tests:%s\tplanned\t0\t%s\t\n' "$(basename "$f" .py)" "$l_tests"
    done
    printf 'benchmark\tplanned\t0\t%s\t\n' "$l_bench"
    printf 'profile\tplanned\t0\t%s\t\n' "$l_profile"
  } > "$OUT/steps.tsv"
  summarize >> "$LOG" 2>&1

  STEP_NOTE="wheels from $dir into $venv"
  if ! step install "$l_install" bash "${BASH_SOURCE[0]}" --install "$dir" "$venv"; then
    echo "[gpu_check] without its environment nothing else can run"
    summarize --final
    return 1
  fi

  # The ops are built into the source tree (editable install); the tests also import the
  # package from it (PYTHONPATH), so a failed build only takes the compiled backend away.
  cd "$ROOT" || die "cannot enter $ROOT"
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  export PATH=$venv/bin:$PATH  # its ninja, for torch's extension builder
  export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/mmtransnext-gpu-check-triton}
  if [ "${GPU_CHECK_BUILD:-1}" = 0 ]; then
    skip build 'GPU_CHECK_BUILD=0: the compiled ops are not built, their tests skip'
  elif [ $(( $(left) - l_sanitizer - l_tests )) -lt "$l_build" ]; then
    local why="its ${l_build} s do not fit the budget before the sanitizer and the tests"
    skip build "$why: the compiled ops are not built, their tests skip"
  else
    STEP_NOTE="TORCH_CUDA_ARCH_LIST=$arch"
    step build "$l_build" env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" \
      MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$vpy" -m pip install --no-build-isolation --no-deps \
      --no-index --disable-pip-version-check -e .
  fi

  # The kernels compiled, not interpreted; no JIT build of the ops if the build above failed.
  unset TRITON_INTERPRET
  export MMTRANSNEXT_JIT_BUILD=0 PYTHONUNBUFFERED=1
  local sanitizer tool sanitizer_start=$SECONDS
  sanitizer=$(find_tool compute-sanitizer)
  for tool in memcheck racecheck; do
    if [ "${GPU_CHECK_SANITIZER:-1}" = 0 ]; then
      skip "sanitizer:$tool" 'GPU_CHECK_SANITIZER=0'
    elif [ -z "$sanitizer" ]; then
      skip "sanitizer:$tool" 'no compute-sanitizer on this machine'
    else
      sanitizer_step "$tool" $(( l_sanitizer - (SECONDS - sanitizer_start) )) "$sanitizer" "$vpy"
    fi
  done

  # Each file in its own process: a memory fault kills that file's CUDA context only.
  local test_start=$SECONDS name
  for f in $files; do
    name=$(basename "$f" .py)
    step "tests:$name" $(( l_tests - (SECONDS - test_start) )) "$vpy" -m pytest "$f" -m gpu \
      --confcutdir tests/gpu -p no:cacheprovider -q -rs --junitxml "$WORK/junit/$name.xml"
  done

  # The benchmark stops starting cases at 3/4 of its limit, so that it ends by itself.
  local bench_limit=$l_bench
  [ "$(left)" -lt "$bench_limit" ] && bench_limit=$(left)
  [ "$bench_limit" -ge 4 ] || bench_limit=4
  step benchmark "$l_bench" "$vpy" tools/analysis/gpu_benchmark.py \
    --out "$OUT/benchmark.json" --time-limit $(( bench_limit * 3 / 4 ))

  local ncu
  ncu=$(find_tool ncu)
  if [ -n "$ncu" ]; then
    STEP_NOTE="$ncu"
    step profile "$l_profile" bash -c \
      '"$1" --kernel-name regex:_attention --launch-count 3 --section SpeedOfLight \
         --section Occupancy --clock-control none --export "$2" -f "$3" \
         tools/gpu_check/profile_attention.py && \
       "$1" --import "$2.ncu-rep" --csv --page details > "$4"' \
      _ "$ncu" "$WORK/ncu" "$vpy" "$OUT/ncu.csv"
  else
    skip profile 'no ncu on this machine'
  fi
  summarize --final
}

# test_files: the gpu tier's files, the kernel-level ones first (their failures are the most
# specific), each run in a process of its own.
test_files() {
  local f
  for f in "$ROOT"/tests/gpu/test_gpu_*.py; do
    case $f in
      *kernels*|*window_ops*) echo "0 tests/gpu/${f##*/}" ;;
      *) echo "1 tests/gpu/${f##*/}" ;;
    esac
  done | sort | cut -d' ' -f2
}

# --------------------------------------------------------------------------- --rehearse
# The device image's versions (KINDS.md of the device tool; OpenCV's is not recorded there).
STANDIN_PYTHON=${GPU_CHECK_STANDIN_BASE:-/root/.pyenv/versions/3.12.1/bin/python3.12}
STANDIN_PACKAGES=(torch==2.11.0 triton==3.6.0 numpy==2.5.2 opencv-python-headless==4.13.0.92)

# findings NAME PATTERN [SED]: the step's result recorded again (the last line of a name wins),
# its note now the step's log lines that match PATTERN (at most 8, edited by SED): what a build
# check or the sanitizer found.
findings() {
  local found
  found=$(sed -n "/^===== $1 (limit/,\$p" "$LOG" | grep -e "$2" | sed "${3:-p;d}" | \
          head -8 | paste -sd';' -)
  [ -n "$found" ] || return 0
  tail -1 "$OUT/steps.tsv" | awk -F'\t' -v OFS='\t' -v f="$found" '{ $5 = f; print }' \
    >> "$OUT/steps.tsv"
  summarize >> "$LOG" 2>&1
}

# rehearse WORK: see --help.
rehearse() {
  local work=$1
  mkdir -p "$work" || die "cannot create $work"
  work=$(cd "$work" && pwd)
  OUT=$work/out
  WORK=$work
  MODE=rehearse
  LOG=$OUT/log.txt
  BUDGET=${GPU_CHECK_BUDGET:-5400}
  mkdir -p "$OUT" "$WORK/junit"
  rm -f "$OUT"/{steps.tsv,results.md,results.json} "$WORK"/junit/*.xml
  : > "$LOG"
  cd "$ROOT" || die "cannot enter $ROOT"
  local f
  {
    for f in standin prepare install imports collect triton-sm90 cuda-build-sm90; do
      printf '%s\tplanned\t0\t0\t\n' "$f"
    done
    for f in gpu build sanitizer tests benchmark profile; do
      printf '%s\tnot reached\t0\t0\tno GPU\n' "$f"
    done
  } > "$OUT/steps.tsv"
  summarize >> "$LOG" 2>&1
  echo "[gpu_check] rehearsal in $work (log: $LOG)"
  STEP_NOTE="Python 3.12, ${STANDIN_PACKAGES[*]}"
  step standin 3000 bash -c 'bash tools/cached_venv.sh device-standin-torch2.11 --python "$1" \
    -- "${@:2}" > "$0"' "$WORK/standin.txt" "$STANDIN_PYTHON" "${STANDIN_PACKAGES[@]}" \
    || { summarize --final; return 1; }
  local standin vpy=$WORK/venv/bin/python
  standin=$(tail -1 "$WORK/standin.txt")
  # pip download needs no particular Python: the stand-in's pip runs it.
  STEP_NOTE="$WORK/wheels"
  PYTHON=$standin step prepare 600 bash "${BASH_SOURCE[0]}" --prepare "$WORK/wheels" \
    || { summarize --final; return 1; }
  STEP_NOTE="offline (pip --no-index) into a venv over the stand-in"
  PYTHON=$standin step install 300 bash "${BASH_SOURCE[0]}" --install "$WORK/wheels" "$WORK/venv" \
    || { summarize --final; return 1; }
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  unset TRITON_INTERPRET
  step imports 300 "$vpy" -c 'import numpy, torch, triton, mmengine, mmcv, mmtransnext
from mmcv.cnn import bricks
from mmengine.runner import Runner
assert numpy.__version__.startswith("2."), numpy.__version__
print("imports: mmtransnext", mmtransnext.__file__, "mmengine", mmengine.__version__,
      "mmcv", mmcv.__version__, "numpy", numpy.__version__, "torch", torch.__version__,
      "triton", triton.__version__)'
  step collect 300 bash -c '"$1" -m pytest tests/gpu -m gpu --confcutdir tests/gpu \
      -p no:cacheprovider -q --collect-only && "$1" tools/gpu_check/sanitize_ops.py --help \
      > /dev/null && "$1" tools/analysis/gpu_benchmark.py --help > /dev/null' _ "$vpy"
  STEP_NOTE='tools/check_triton_build.py --arch 90 with the stand-in triton'
  step triton-sm90 1200 "$vpy" tools/check_triton_build.py --arch 90 || \
    findings triton-sm90 '^FAILED v' 's/^FAILED //; s/; launched by [^)]*)/)/'
  STEP_NOTE='tools/check_cuda_build.sh, TORCH_CUDA_ARCH_LIST=9.0, the stand-in torch'
  # Its own cache (the build is redone when sources, flags, torch or nvcc change), apart from
  # the test suite's sm_80 build.
  step cuda-build-sm90 1200 env MMTRANSNEXT_VENV="$WORK/venv" TORCH_CUDA_ARCH_LIST=9.0 \
    MMTRANSNEXT_CUDA_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/mmtransnext/gpu-rehearsal" \
    bash tools/check_cuda_build.sh
  cat <<'EOF'
[gpu_check] the rehearsal cannot reach (no GPU here):
  - the gpu step: the device's driver, its torch.cuda, the GPU's compute capability;
  - the build on the device: its nvcc and CPU count (here: the same sources, the stand-in
    torch, sm_90, with this machine's nvcc);
  - every kernel's execution: the sanitizer (memcheck, racecheck), the gpu tier's results
    (collected only), run-twice bitwise equality, odd-batch pairs on hardware;
  - timings: the steps' durations against the budget, Triton's compile time there, the
    benchmark and Nsight Compute's profile;
  - the device's other packages (its own builds of numpy and OpenCV; the stand-in has PyPI's).
EOF
  summarize --final
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
  --rehearse)
    [ $# -le 2 ] || die "--rehearse takes one folder (see --help)"
    rehearse "${2:-/tmp/mmtransnext-gpu-rehearsal}" ;;
  --functions) return 0 2>/dev/null || exit 0 ;;  # sourced for its functions (the tests)
  --sanitize)  # --run's sanitizer step: TOOL SANITIZER VPY WORK
    [ $# -eq 5 ] || die "--sanitize needs TOOL SANITIZER PYTHON WORK"
    WORK=$5 sanitize "$2" "$3" "$4" ;;
  --install)
    [ $# -eq 3 ] || die "--install needs DIR VENV (see --help)"
    install "$2" "$3" ;;
  *) die "unknown argument $1 (see --help)" ;;
esac
