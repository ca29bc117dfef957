#!/usr/bin/env bash
# srun of one of the tools, one task per GPU: what tools/slurm_train.sh and slurm_test.sh share.
#   bash tools/slurm_run.sh PARTITION JOB_NAME TOOL [tool arguments]   (TOOL: train.py, test.py)
# Environment: GPUS (tasks in all, default 8), GPUS_PER_NODE (default 8), CPUS_PER_TASK
# (default 5), SRUN_ARGS (extra srun options, e.g. "--quotatype=auto"), PYTHON.
# The tool's --launcher slurm reads SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_NODELIST
# (the first node is the rendezvous, on port MASTER_PORT, default 29500).
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
TOOL=$3
shift 3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck disable=SC2086  # SRUN_ARGS holds several options
exec srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" \
  --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" \
  --kill-on-bad-exit=1 $SRUN_ARGS \
  "$PYTHON" -u "$ROOT/tools/$TOOL" "$@" --launcher=slurm
