#!/usr/bin/env bash
# Test on NPROC processes of this machine (one per GPU; on a CPU-only machine they use gloo).
#   bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py options]
# Several machines (torchrun): the same command on each, with NNODES (machines), NODE_RANK
# (0 .. NNODES-1), MASTER_ADDR (node 0's address) and PORT (default 29500), e.g. two nodes of 8:
#   node 0: NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_test.sh CONFIG CHECKPOINT 8
#   node 1: NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_test.sh CONFIG CHECKPOINT 8
# On a Slurm cluster use tools/slurm_train.sh / slurm_test.sh instead.
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
