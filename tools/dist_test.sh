#!/usr/bin/env bash
# Test on NPROC processes of this machine (one per GPU; on a CPU-only machine they use gloo).
#   bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py options]
# Several machines: NNODES, NODE_RANK, MASTER_ADDR, PORT as for torchrun.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash $0 CONFIG CHECKPOINT NPROC [tools/test.py options]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
shift 3
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
  --nproc_per_node="$NPROC" \
  "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
