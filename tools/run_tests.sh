#!/usr/bin/env bash
# Install what is missing (tools/install.sh), then run the whole test suite: the fast tier that
# plain `pytest` runs (pytest.ini) and the slow and cuda_build tiers. Prints the 20 slowest tests.
# Arguments replace the selection and go to pytest, e.g. `bash tools/run_tests.sh -m slow` or
# `-k checkpoint`.
#
# The tests run in MMTRANSNEXT_TEST_WORKERS pytest-xdist workers (default: one per core, at most
# 4; 0 runs them in this process), a file per worker at a time (`--dist loadfile`: a module's
# fixtures are built once); tests/conftest.py gives each worker its share of the cores.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/install.sh"
VENV=${MMTRANSNEXT_VENV:-$ROOT/.venv}
cd "$ROOT"
if [ $# -eq 0 ]; then
  set -- -m "slow or not slow"
fi
CORES=$(nproc 2>/dev/null || echo 1)
WORKERS=${MMTRANSNEXT_TEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}
PARALLEL=()
[ "$WORKERS" -gt 1 ] && PARALLEL=(-n "$WORKERS" --dist loadfile)
exec "$VENV/bin/python" -m pytest --durations=20 "${PARALLEL[@]}" "$@"
