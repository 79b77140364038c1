#!/usr/bin/env bash
# Run `p2g run CONFIG.yaml` on the login node: the Dask scheduler lives in this process and the
# workers are SLURM jobs that dask-jobqueue's SLURMCluster submits (and cancels at the end).
# Run it inside tmux/screen: the run ends when this shell does.
#
# Usage:  deploy/slurm/run-login-scheduler.sh CONFIG.yaml [JOBS]
# The CONFIG's `cluster:` section must be absent or `kind: slurm`; this script sets
#   DASK_P2G__CLUSTER__KIND=slurm, ..._SLURM__CONFIG and ..._SLURM__JOBS.
# Environment:
#   P2G_JOBQUEUE_CONFIG  jobqueue YAML (default: jobqueue.yaml beside this script)
#   P2G_INTERFACE        interface the compute nodes reach this node on (e.g. ib0). Unset, the
#                        scheduler listens on 127.0.0.1 only: fine for a one-node SLURM, not for
#                        workers on other nodes.
#   P2G_WAIT             how long to wait for the first worker (default 600s)
#   P2G_CMD              the p2g command (default p2g)
set -euo pipefail

CONFIG="${1:?usage: run-login-scheduler.sh CONFIG.yaml [JOBS]}"
JOBS="${2:-${P2G_JOBS:-2}}"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "error: JOBS=$JOBS must be a positive integer" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
JQ="${P2G_JOBQUEUE_CONFIG:-$HERE/jobqueue.yaml}"
[[ -f "$JQ" ]] || { echo "error: P2G_JOBQUEUE_CONFIG=$JQ does not exist" >&2; exit 2; }
command -v sbatch >/dev/null || { echo "error: sbatch not found: run this on a SLURM login node" >&2; exit 1; }
read -r -a P2G <<<"${P2G_CMD:-p2g}"

export DASK_P2G__CLUSTER__KIND=slurm
export DASK_P2G__CLUSTER__SLURM__CONFIG="$JQ"
export DASK_P2G__CLUSTER__SLURM__JOBS="$JOBS"
export DASK_P2G__CLUSTER__SLURM__TIMEOUT="${P2G_WAIT:-600s}"
if [[ -n "${P2G_INTERFACE:-}" ]]; then
    export DASK_JOBQUEUE__SLURM__INTERFACE="$P2G_INTERFACE"
fi
exec "${P2G[@]}" run "$CONFIG"
