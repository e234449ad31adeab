#!/usr/bin/env bash
# A real, single-node Slurm for the tests: Debian's slurmctld + slurmd + munge on this machine,
# one node advertising one GPU (GRES, count only) in two partitions, `cpu` (default) and `gpu`.
# It exists so the Slurm profile (workflow/profiles/slurm) is tested against the real scheduler
# rather than a mock: the end-to-end test (tests/test_slurm.py) reads back from Slurm what each
# job asked for.
#
#   tests/cluster/slurm.sh start    install if absent, write the config, start the daemons and wait
#                                   until the node is idle (a no-op when already running)
#   tests/cluster/slurm.sh stop     cancel this cluster's jobs and stop the daemons it started
#   tests/cluster/slurm.sh status   exit 0 when the cluster answers and the node is usable
#
# Needs root (apt-get, daemons); meant for CI machines and containers, not for a host that is
# already a Slurm cluster: it refuses to touch an /etc/slurm/slurm.conf it did not write.
# State, spool, logs and the generated config live in $PREFGEN_SLURM_DIR (default
# /tmp/prefgen-slurm). The config is linked to /etc/slurm/ because Slurm's client commands inside
# a job (the executor plugin's nested `srun`) drop SLURM_CONF and read the default path.
set -euo pipefail

STATE_DIR=${PREFGEN_SLURM_DIR:-/tmp/prefgen-slurm}
ETC=/etc/slurm
MARKER="# written by prefgen tests/cluster/slurm.sh"
WAIT_SECONDS=${PREFGEN_SLURM_WAIT:-60}
NODE=$(hostname -s)

log() { echo "[slurm.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
}

install_if_absent() {
    local missing=()
    for bin in slurmctld slurmd munged sbatch srun squeue scontrol sinfo; do
        command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    local pkgs=(slurmctld slurmd slurm-client munge)
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; }
    # On a machine run by systemd the packages enable their own services; this script runs the
    # Slurm daemons itself (munge's service, if running, is used as is).
    if [[ -d /run/systemd/system ]]; then
        systemctl disable --now slurmctld slurmd >/dev/null 2>&1 || true
    fi
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_ok && return 0
    # The package creates the munge user and normally the key; CI images without an init system
    # may lack the key or the runtime dir.
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE_DIR/munged.started-by-us"
    for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

# The node line comes from `slurmd -C` (this machine's real CPUs, sockets, memory), so slurmd
# never drains it for a mismatch; only the GPU is declared on top of it.
write_config() {
    local hw
    hw=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ UpTime=.*//')
    mkdir -p "$STATE_DIR"/{etc,state,spool,log,run}
    cat >"$STATE_DIR/etc/slurm.conf.new" <<CONF
$MARKER
# One node, two partitions; no accounting database (job status comes from squeue, so finished
# jobs stay visible for MinJobAge seconds).
ClusterName=prefgen
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
InactiveLimit=0
KillWait=10
Waittime=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 $hw Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
CONF
    # A gpu GRES without a device file registers as 0 and drains the node; /dev/null stands in
    # for the device (nothing here uses it: torch sees no CUDA device and runs on CPU).
    cat >"$STATE_DIR/etc/gres.conf" <<CONF
$MARKER
AutoDetect=off
NodeName=$NODE Name=gpu File=/dev/null Count=1
CONF
    mv "$STATE_DIR/etc/slurm.conf.new" "$STATE_DIR/etc/slurm.conf"
    mkdir -p "$ETC"
    for f in slurm.conf gres.conf; do
        if [[ -e $ETC/$f && ! -L $ETC/$f ]] && ! grep -qF "$MARKER" "$ETC/$f"; then
            die "$ETC/$f exists and was not written by this script; refusing to replace it"
        fi
        ln -sfn "$STATE_DIR/etc/$f" "$ETC/$f"
    done
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true; }

wait_until_idle() {
    local state="" resumed=0
    for _ in $(seq $((WAIT_SECONDS * 2))); do
        state=$(node_state)
        case $state in
            idle|mixed|allocated|completing) log "node $NODE is $state"; return 0 ;;
            drain*|down*|fail*)
                # A stale drain (e.g. left from an earlier config) is cleared once.
                if [[ $resumed -eq 0 ]]; then
                    scontrol update nodename="$NODE" state=resume 2>/dev/null || true
                    resumed=1
                fi ;;
        esac
        sleep 0.5
    done
    log "node $NODE did not become idle (state: '${state:-no answer}'); reason and log tails:"
    sinfo -R >&2 || true
    tail -n 20 "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log" >&2 || true
    exit 1
}

start() {
    need_root
    mkdir -p "$STATE_DIR"
    install_if_absent
    start_munge
    if pid_alive "$STATE_DIR/run/slurmctld.pid" && pid_alive "$STATE_DIR/run/slurmd.pid"; then
        log "already running (state in $STATE_DIR)"
        wait_until_idle
        return 0
    fi
    write_config
    # -c: a clean start, without jobs left over in the state dir from an earlier start.
    pid_alive "$STATE_DIR/run/slurmctld.pid" || slurmctld -c
    for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
    scontrol ping >/dev/null 2>&1 || { tail -n 20 "$STATE_DIR/log/slurmctld.log" >&2; die "slurmctld did not answer"; }
    pid_alive "$STATE_DIR/run/slurmd.pid" || slurmd -N "$NODE"
    wait_until_idle
    log "started: partitions $(sinfo -h -o %P | tr '\n' ' ')(config $STATE_DIR/etc/slurm.conf)"
}

stop_pidfile() {
    local pidfile=$1 name=$2
    pid_alive "$pidfile" || return 0
    local pid
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { log "stopped $name"; return 0; }; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "killed $name"
}

stop() {
    need_root
    if [[ -f $STATE_DIR/etc/slurm.conf ]] && scontrol ping >/dev/null 2>&1; then
        scancel --partition=cpu,gpu 2>/dev/null || true
    fi
    stop_pidfile "$STATE_DIR/run/slurmd.pid" slurmd
    stop_pidfile "$STATE_DIR/run/slurmctld.pid" slurmctld
    if [[ -f $STATE_DIR/munged.started-by-us ]]; then
        local pid
        pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill "$pid" && log "stopped munged"; fi
        rm -f "$STATE_DIR/munged.started-by-us"
    fi
    for f in slurm.conf gres.conf; do
        if [[ -L $ETC/$f && $(readlink "$ETC/$f") == "$STATE_DIR/etc/$f" ]]; then rm -f "$ETC/$f"; fi
    done
}

ours() { [[ -f $ETC/slurm.conf ]] && grep -qF "$MARKER" "$ETC/slurm.conf"; }

status() {
    ours || { log "no Slurm config written by this script in $ETC"; return 1; }
    scontrol ping >/dev/null 2>&1 || { log "slurmctld does not answer"; return 1; }
    local state
    state=$(node_state)
    case $state in
        idle|mixed|allocated|completing) log "node $NODE is $state"; return 0 ;;
        *) log "node $NODE is '${state:-unknown}'"; return 1 ;;
    esac
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
