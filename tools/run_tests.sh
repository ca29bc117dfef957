#!/usr/bin/env bash
# Install what is missing (tools/install.sh), then run the whole test suite: the fast tier that
# plain `pytest` runs (pytest.ini) and the slow and cuda_build tiers. Prints the 20 slowest tests.
# Arguments replace the selection and go to pytest, e.g. `bash tools/run_tests.sh -m slow` or
# `-k checkpoint`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/install.sh"
VENV=${MMTRANSNEXT_VENV:-$ROOT/.venv}
cd "$ROOT"
if [ $# -eq 0 ]; then
  set -- -m "slow or not slow"
fi
exec "$VENV/bin/python" -m pytest --durations=20 "$@"
