#!/usr/bin/env bash
# Start a Dask scheduler and N workers as separate processes on 127.0.0.1, for
# start_cluster("address", ...) and `p2g run` with `cluster: {kind: address}`.
#
# Usage: deploy/local/start-local-cluster.sh [-n WORKERS] [-t THREADS] [-m MEMORY] [-p PORT]
#                                            [-d DIR] [-w SECONDS]
#   -n  number of `dask worker` processes           (default 2)
#   -t  threads per worker                          (default 1)
#   -m  memory limit per worker, e.g. 4GiB          (default auto: the machine's memory / N)
#   -p  scheduler port, 0 for a random free port    (default 8786)
#   -d  folder for PIDs, address, logs              (default ./dask-local-cluster)
#   -w  seconds to wait for all workers to connect  (default 60)
# Writes DIR/address (tcp://127.0.0.1:PORT), DIR/dashboard (link), DIR/scheduler.json,
# DIR/scheduler.pid, DIR/worker-I.pid and DIR/*.log. Stop with stop-local-cluster.sh DIR.
# Environment: DASK (default `dask`) is the command that runs `dask scheduler` / `dask worker`,
# PYTHON (default python3) checks that the workers connected.
set -euo pipefail

N=2; THREADS=1; MEMORY=auto; PORT=8786; DIR=./dask-local-cluster; WAIT=60
while getopts "n:t:m:p:d:w:h" opt; do
    case "$opt" in
        n) N="$OPTARG" ;; t) THREADS="$OPTARG" ;; m) MEMORY="$OPTARG" ;;
        p) PORT="$OPTARG" ;; d) DIR="$OPTARG" ;; w) WAIT="$OPTARG" ;;
        h) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "usage: $0 [-n WORKERS] [-t THREADS] [-m MEMORY] [-p PORT] [-d DIR] [-w SECONDS]" >&2; exit 2 ;;
    esac
done
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "error: -n $N: the number of workers must be a positive integer" >&2; exit 2; }
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "error: -t $THREADS: threads must be a positive integer" >&2; exit 2; }
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "error: -p $PORT: the port must be a number (0 for a random one)" >&2; exit 2; }

read -r -a DASK_CMD <<<"${DASK:-dask}"
PY="${PYTHON:-python3}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
if [[ -s "$DIR/scheduler.pid" ]] && kill -0 "$(cat "$DIR/scheduler.pid")" 2>/dev/null; then
    echo "error: a scheduler from $DIR is still running (pid $(cat "$DIR/scheduler.pid")); stop it with stop-local-cluster.sh $DIR" >&2
    exit 1
fi
rm -f "$DIR"/address "$DIR"/dashboard "$DIR"/scheduler.json "$DIR"/*.pid

# setsid + nohup: the processes outlive this script and the terminal that started it; each
# writes only to its own log so callers waiting on our stdout are not held open.
setsid nohup "${DASK_CMD[@]}" scheduler --host 127.0.0.1 --port "$PORT" \
    --dashboard-address 127.0.0.1:0 --scheduler-file "$DIR/scheduler.json" \
    >"$DIR/scheduler.log" 2>&1 </dev/null &
echo $! >"$DIR/scheduler.pid"

deadline=$((SECONDS + WAIT))
until [[ -s "$DIR/scheduler.json" ]]; do
    if ! kill -0 "$(cat "$DIR/scheduler.pid")" 2>/dev/null; then
        echo "error: the scheduler exited; see $DIR/scheduler.log:" >&2; tail -n 20 "$DIR/scheduler.log" >&2; exit 1
    fi
    ((SECONDS < deadline)) || { echo "error: no scheduler file after ${WAIT}s; see $DIR/scheduler.log" >&2; exit 1; }
    sleep 0.2
done
sleep 0.2  # the file is written in one go, but give the writer a moment to close it
ADDRESS="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["address"])' "$DIR/scheduler.json")"
echo "$ADDRESS" >"$DIR/address"

for i in $(seq 1 "$N"); do
    setsid nohup "${DASK_CMD[@]}" worker "$ADDRESS" --host 127.0.0.1 --nthreads "$THREADS" \
        --memory-limit "$MEMORY" --dashboard-address 127.0.0.1:0 --name "local-worker-$i" \
        >"$DIR/worker-$i.log" 2>&1 </dev/null &
    echo $! >"$DIR/worker-$i.pid"
done

# Wait until all N workers are connected, so a caller can compute right away.
"$PY" - "$ADDRESS" "$N" "$WAIT" "$DIR" <<'PYEOF'
import sys
from distributed import Client
address, n, wait, folder = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
with Client(address, timeout=wait) as client:
    try:
        client.wait_for_workers(n, timeout=wait)
    except TimeoutError as err:
        sys.exit(f"error: {err}; see the worker logs in {folder}")
    link = client.dashboard_link or ""
open(f"{folder}/dashboard", "w").write(link + "\n")
print(f"scheduler {address} with {n} worker(s); dashboard {link}; stop: stop-local-cluster.sh {folder}")
PYEOF
