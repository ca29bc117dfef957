#!/usr/bin/env bash
# Install what is missing (tools/install.sh), then run the bundled demo.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/install.sh"
VENV=${MMTRANSNEXT_VENV:-$ROOT/.venv}
cd "$ROOT"
exec "$VENV/bin/python" tools/demo.py "$@"
