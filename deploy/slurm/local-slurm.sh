#!/usr/bin/env bash
# A real one-node SLURM on this machine, for tests and for trying the SLURM deployment locally.
#
# Installs Debian's munge/slurmctld/slurmd/slurm-client (apt-get update only when something is
# missing), writes /etc/slurm/slurm.conf for this host (the node's real CPUs and memory from
# `slurmd -C`, one partition `debug`, proctrack/linuxproc and task/none so no cgroups are needed),
# creates a munge key, starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node
# idle. Every step is skipped when already done, so running it twice is harmless.
#
# Usage:  sudo deploy/slurm/local-slurm.sh [start|stop|status]
# Environment:
#   P2G_SLURM_TIMEOUT   seconds to wait for the node to become idle (default 60)
#   P2G_SLURM_FORCE=1   replace an /etc/slurm/slurm.conf that this script did not write
set -euo pipefail

ACTION="${1:-start}"
TIMEOUT="${P2G_SLURM_TIMEOUT:-60}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by p2g_dask deploy/slurm/local-slurm.sh"
NODE="$(hostname -s)"
PKGS=(munge slurm-client slurmctld slurmd)
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

log() { printf '[local-slurm] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A daemon counts as running when its pid file names a live process of that program; a stale
# pid file (after a reboot or a kill) must not make us skip the start.
running() {  # running PIDFILE PROGRAM
    local pidfile="$1" prog="$2" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ -r "/proc/$pid/comm" ]] && [[ "$(cat "/proc/$pid/comm")" == "$prog" ]] || return 1
    # A killed daemon that nobody reaped yet is a zombie: it does not count as running.
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]
}

stop_daemon() {  # stop_daemon PIDFILE PROGRAM
    local pidfile="$1" prog="$2" pid i
    if running "$pidfile" "$prog"; then
        pid="$(cat "$pidfile")"
        log "stopping $prog (pid $pid)"
        kill "$pid"
        for i in $(seq 1 50); do
            [[ -d "/proc/$pid" ]] || break
            sleep 0.2
        done
    fi
}

install_packages() {
    local missing=() p
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "packages already installed: ${PKGS[*]}"
        return
    fi
    log "installing ${missing[*]}"
    # Keep the packages' init scripts from starting daemons before slurm.conf exists.
    local added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    if ((added_policy)); then rm -f /usr/sbin/policy-rc.d; fi
}

write_munge_key() {
    if [[ -s /etc/munge/munge.key ]]; then
        log "munge key exists"
        return
    fi
    log "creating munge key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
}

start_munge() {
    if running "$MUNGE_PID" munged; then
        log "munged already running"
        return
    fi
    log "starting munged"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
    munge -n | unmunge >/dev/null || die "munge does not work; see /var/log/munge/munged.log"
}

slurm_conf() {
    # `slurmd -C` reports this machine's real sockets/cores/threads and memory.
    local hw mem
    hw="$(slurmd -C | head -n 1)"
    [[ "$hw" == NodeName=* ]] || die "could not read the hardware with 'slurmd -C' (got: $hw)"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
    # Leave 1 GiB to the OS and the daemons so jobs asking for "all" memory still fit.
    hw="$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem > 2048 ? mem - 1024 : mem))/" <<<"$hw")"
    cat <<CONF
$MARKER
ClusterName=p2g-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
$hw NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

write_slurm_conf() {
    mkdir -p "$CONF_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
    if [[ -e "$CONF" ]] && ! grep -qF "$MARKER" "$CONF" && [[ "${P2G_SLURM_FORCE:-0}" != 1 ]]; then
        die "$CONF exists and was not written by this script; set P2G_SLURM_FORCE=1 to replace it"
    fi
    local new
    new="$(slurm_conf)"
    if [[ -e "$CONF" ]] && [[ "$(cat "$CONF")" == "$new" ]]; then
        log "$CONF is up to date"
        return
    fi
    log "writing $CONF"
    printf '%s\n' "$new" > "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    # Daemons read slurm.conf at start: restart the ones we run so they see the new file.
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
}

start_slurm() {
    if running "$CTLD_PID" slurmctld; then
        log "slurmctld already running"
    else
        log "starting slurmctld"
        slurmctld
    fi
    if running "$SLURMD_PID" slurmd; then
        log "slurmd already running"
    else
        log "starting slurmd"
        slurmd
    fi
}

wait_idle() {
    local deadline=$((SECONDS + TIMEOUT)) state="" resumed=0
    while ((SECONDS < deadline)); do
        state="$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1 || true)"
        case "$state" in
            idle|mixed|allocated) log "node $NODE is $state"; sinfo; return 0 ;;
            down*|drain*)
                # A node left down by an earlier run (e.g. the machine restarted) comes back here.
                if ((resumed == 0)); then
                    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi ;;
        esac
        sleep 1
    done
    log "node $NODE is not idle after ${TIMEOUT}s (state: '${state:-unknown}')"
    sinfo -N -l >&2 || true
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    return 1
}

case "$ACTION" in
    start)
        [[ "$(id -u)" == 0 ]] || die "run as root (it installs packages and starts daemons)"
        install_packages
        write_munge_key
        start_munge
        write_slurm_conf
        start_slurm
        wait_idle
        ;;
    stop)
        stop_daemon "$SLURMD_PID" slurmd
        stop_daemon "$CTLD_PID" slurmctld
        stop_daemon "$MUNGE_PID" munged
        ;;
    status)
        for d in "$MUNGE_PID munged" "$CTLD_PID slurmctld" "$SLURMD_PID slurmd"; do
            set -- $d
            if running "$1" "$2"; then echo "$2: running (pid $(cat "$1"))"; else echo "$2: not running"; fi
        done
        command -v sinfo >/dev/null && sinfo || true
        ;;
    *) die "unknown action '$ACTION'; use start, stop or status" ;;
esac
