#!/usr/bin/env bash
# Stop the scheduler and workers started by start-local-cluster.sh, by the PIDs it wrote.
# Usage: deploy/local/stop-local-cluster.sh [DIR]   (default ./dask-local-cluster)
set -euo pipefail
DIR="${1:-./dask-local-cluster}"
[[ -d "$DIR" ]] || { echo "error: $DIR is not a folder written by start-local-cluster.sh" >&2; exit 1; }

# Only signal a PID that still runs a dask process, so a recycled PID is never hit.
is_ours() { [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q dask; }

stop_pidfile() {
    local f="$1" pid i
    [[ -s "$f" ]] || return 0
    pid="$(cat "$f")"
    if is_ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do is_ours "$pid" || break; sleep 0.2; done
        if is_ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$f"
}

# Workers first, so they do not try to reconnect to a scheduler that is going away.
shopt -s nullglob
for f in "$DIR"/worker-*.pid; do stop_pidfile "$f" & done
wait
stop_pidfile "$DIR/scheduler.pid"
rm -f "$DIR/address" "$DIR/dashboard"
echo "stopped the Dask processes of $DIR"
