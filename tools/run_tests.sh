#!/usr/bin/env bash
# Install what is missing (tools/install.sh), then run the test suite. Extra arguments go to
# pytest, e.g. `bash tools/run_tests.sh -m slow` or `-k checkpoint`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/install.sh"
VENV=${MMTRANSNEXT_VENV:-$ROOT/.venv}
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
