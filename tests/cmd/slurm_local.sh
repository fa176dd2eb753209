# A real single-node Slurm cluster for tests (sourced): its own munged, and
# slurmctld + slurmd on this machine, all with files under one folder, so a
# test can `sbatch --wait` real jobs. Nothing system-wide is touched: the
# munge key and socket, slurm.conf, state, spool, logs and pid files are the
# folder's; the ports are free ones picked at start, so several clusters
# (concurrent test runs) can live side by side. No systemd needed: the
# daemons are started directly.
#
#   . tests/cmd/slurm_local.sh
#   if slurm_local_start "$T/slurm"; then     # exports SLURM_CONF
#       sbatch --wait --array=0-3 job.sh
#   else
#       echo "SKIP slurm: $SLURM_LOCAL_WHY" >&2
#   fi
#   slurm_local_stop                          # also run on EXIT
#   slurm_local_job_state JOBID               # e.g. COMPLETED 0:0 (state, exit code)
#
# slurm_local_start fails (1, reason in SLURM_LOCAL_WHY, nothing left running)
# when the cluster cannot be had here: not root (slurmd must be, to run jobs
# as their submitter), Debian's slurm-wlm or munge missing, or the daemons do
# not come up (their logs' last lines are in the reason).

SLURM_LOCAL_DIR=; SLURM_LOCAL_WHY=; SLURM_LOCAL_PIDS=

# the commands each part needs, in the packages that bring them
_slurm_local_missing() {
    local c m=
    for c in munged slurmctld slurmd sbatch sinfo scontrol; do
        command -v "$c" > /dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$c" > /dev/null 2>&1 || m="$m $c"
    done
    echo "$m"
}

# N free TCP ports on the loopback (the kernel picks them)
_slurm_local_ports() {
    /usr/bin/python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# _slurm_local_fail REASON: stop what started, keep the reason
_slurm_local_fail() {
    SLURM_LOCAL_WHY=$1
    slurm_local_stop
    return 1
}

# _slurm_local_wait SECONDS COMMAND...: poll until the command succeeds
_slurm_local_wait() {
    local n=$(($1 * 10)); shift
    while [ $n -gt 0 ]; do
        "$@" > /dev/null 2>&1 && return 0
        sleep 0.1; n=$((n - 1))
    done
    return 1
}

# _slurm_local_log NAME: the last lines of a daemon's log, on one line
_slurm_local_log() {
    tail -n 3 "$SLURM_LOCAL_DIR/$1.log" 2> /dev/null | tr '\n' ' ' | cut -c 1-400
}

slurm_local_start() {
    local d=$1 m ports cport dport host cpus mem
    SLURM_LOCAL_WHY=; SLURM_LOCAL_PIDS=
    [ "$(id -u)" -eq 0 ] || { SLURM_LOCAL_WHY="not root (slurmd runs jobs as their user only as root)"; return 1; }
    case :$PATH: in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin ;; esac
    m=$(_slurm_local_missing)
    [ -z "$m" ] || { SLURM_LOCAL_WHY="missing:$m (Debian's slurm-wlm and munge; scripts/install-deps installs them)"; return 1; }
    mkdir -p "$d" && d=$(cd "$d" && pwd) || { SLURM_LOCAL_WHY="cannot make $d"; return 1; }
    SLURM_LOCAL_DIR=$d
    # no daemon outlives the test, however it ends
    trap slurm_local_stop EXIT
    trap 'slurm_local_stop; exit 130' INT TERM HUP
    # munged refuses a key or socket folder that others can write or read
    mkdir -p "$d/munge" "$d/state" "$d/spool" && chmod 700 "$d" "$d/munge"
    mungekey --create --keyfile="$d/munge/munge.key" 2> "$d/mungekey.log" ||
        { _slurm_local_fail "mungekey failed: $(_slurm_local_log mungekey)"; return 1; }
    munged --force --foreground --socket="$d/munge/munge.sock" --key-file="$d/munge/munge.key" \
        --log-file="$d/munged.log" --pid-file="$d/munge/munged.pid" --seed-file="$d/munge/seed" \
        > "$d/munged.out" 2>&1 &
    SLURM_LOCAL_PIDS="$!"
    _slurm_local_wait 10 test -S "$d/munge/munge.sock" ||
        { _slurm_local_fail "munged did not start: $(_slurm_local_log munged) $(tail -c 300 "$d/munged.out")"; return 1; }

    ports=$(_slurm_local_ports 2) || { _slurm_local_fail "no free port"; return 1; }
    cport=${ports% *}; dport=${ports#* }
    host=$(hostname -s)
    cpus=$(nproc)
    # a little less than the machine has, so the node never drains for memory
    mem=$(awk '/^MemTotal:/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
    cat > "$d/slurm.conf" <<EOF
ClusterName=cptest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$cport
SlurmdPort=$dport
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/munge.sock
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/slurmctld.log
SlurmdLogFile=$d/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
# start a task as soon as a CPU is free (by default batch jobs wait up to 3 s)
SchedulerParameters=batch_sched_delay=0
# a job whose dependency can no longer be met (afterok on a failed job) is
# cancelled rather than left pending
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MailProg=/bin/true
# the container's CPU layout need not match what is declared here
SlurmdParameters=config_overrides
# finished jobs stay visible to scontrol (their state and exit code) for the
# test's life
MinJobAge=3600
InactiveLimit=0
KillWait=2
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$d/slurm.conf
    # -D: in the foreground (of this background job); -i: ignore old state
    slurmctld -D -i -f "$d/slurm.conf" > "$d/slurmctld.out" 2>&1 &
    SLURM_LOCAL_PIDS="$SLURM_LOCAL_PIDS $!"
    _slurm_local_wait 20 scontrol ping ||
        { _slurm_local_fail "slurmctld did not answer: $(_slurm_local_log slurmctld) $(tail -c 300 "$d/slurmctld.out")"; return 1; }
    slurmd -D -f "$d/slurm.conf" > "$d/slurmd.out" 2>&1 &
    SLURM_LOCAL_PIDS="$SLURM_LOCAL_PIDS $!"
    _slurm_local_wait 30 sh -c "sinfo -h -N -o %T | grep -qx idle" ||
        { _slurm_local_fail "the node did not become idle (sinfo: $(sinfo -h -N -o '%T %E' 2>&1 | head -1)): $(_slurm_local_log slurmd) $(tail -c 300 "$d/slurmd.out")"; return 1; }
    return 0
}

# slurm_local_job_state JOBID: its state and exit code, e.g. "COMPLETED 0:0"
# (no accounting here: scontrol keeps finished jobs for MinJobAge). For an
# array, one line per task.
slurm_local_job_state() {
    scontrol -o show job "$1" 2> /dev/null |
        sed -n 's/.*JobState=\([^ ]*\).* ExitCode=\([^ ]*\).*/\1 \2/p'
}

# slurm_local_wait_job SECONDS JOBID: until the job (every task) has ended
slurm_local_wait_job() {
    _slurm_local_wait "$1" sh -c "! scontrol -o show job '$2' | grep -qE 'JobState=(PENDING|RUNNING|CONFIGURING|COMPLETING|SUSPENDED)'"
}

# Cancels the jobs left, stops the daemons (TERM, then KILL) it started.
slurm_local_stop() {
    local p n
    [ -n "$SLURM_LOCAL_PIDS" ] || return 0
    [ -n "${SLURM_CONF:-}" ] && scancel --quiet --full --user=root > /dev/null 2>&1
    # slurmd first: it ends the job steps it runs
    for p in $(echo "$SLURM_LOCAL_PIDS" | tr ' ' '\n' | tac); do kill "$p" 2> /dev/null; done
    for p in $SLURM_LOCAL_PIDS; do
        n=50
        while [ $n -gt 0 ] && kill -0 "$p" 2> /dev/null; do sleep 0.1; n=$((n - 1)); done
        kill -0 "$p" 2> /dev/null && kill -9 "$p" 2> /dev/null
        wait "$p" 2> /dev/null
    done
    SLURM_LOCAL_PIDS=
    return 0
}
