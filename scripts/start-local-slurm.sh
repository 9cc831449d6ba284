#!/usr/bin/env bash
# Start a real single-node SLURM on this machine, for tests/slurm (.ci/run runs this, then `pytest -m slurm`).
#
#   bash scripts/start-local-slurm.sh
#
# Installs Debian's slurm-wlm (22.05 on bookworm) and munge with apt-get if they are missing, writes a minimal
# /etc/slurm/slurm.conf for one node called "localhost" (this machine's CPU count and memory, select/cons_tres,
# proctrack/linuxproc, task/none, no cgroups, no accounting), starts munged, slurmctld and slurmd, and waits until
# `sinfo` shows the node idle. Idempotent: daemons already running are kept (slurm.conf changes are applied with
# `scontrol reconfigure`). Needs root, apt-get and no SLURM of the machine's own in /etc/slurm.
#
# Exit status: 0 ready; 77 this machine cannot run it (the reason is printed; CI counts it as skipped); 1 failure
# (the daemons' logs are printed).
#
# Settings: SLURM_READY_TIMEOUT (seconds to wait for the node, default 60).
set -euo pipefail

SKIP=77
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARK="# written by score-rl scripts/start-local-slurm.sh"
LOG_DIR=/var/log/slurm
READY_TIMEOUT=${SLURM_READY_TIMEOUT:-60}

say() { printf '[start-local-slurm] %s\n' "$*" >&2; }
skip() { say "skipped: $*"; exit "$SKIP"; }

show_logs() {
  local f
  for f in /var/log/munge/munged.log "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
    [[ -f "$f" ]] || continue
    say "--- last lines of $f"
    tail -n 40 "$f" >&2
  done
}

fail() {
  say "error: $*"
  show_logs
  exit 1
}

running() { pgrep -x "$1" >/dev/null 2>&1; }

# --- can this machine run it? ------------------------------------------------------------------------------------
[[ "$(uname -s)" == Linux ]] || skip "needs Linux (this is $(uname -s))"
(( EUID == 0 )) || skip "needs root (to install packages and start munged, slurmctld and slurmd as root)"
if [[ -f "$CONF" ]] && ! grep -qxF "$MARK" "$CONF"; then
  skip "$CONF exists and was not written by this script: this machine has a SLURM of its own, left untouched"
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || skip "slurm-wlm / munge are not installed and there is no apt-get to install them"
  say "installing slurm-wlm and munge with apt-get"
  # No init system is assumed: keep the packages' postinst from starting the daemons (this script starts them).
  policy_rc=/usr/sbin/policy-rc.d
  made_policy=0
  if [[ ! -e "$policy_rc" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy_rc" && chmod +x "$policy_rc" && made_policy=1
  fi
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge
  }
  ok=1
  if ! apt_install >/tmp/start-local-slurm-apt.log 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>/tmp/start-local-slurm-apt.log 2>&1 || true
    apt_install >>/tmp/start-local-slurm-apt.log 2>&1 || ok=0
  fi
  (( made_policy )) && rm -f "$policy_rc"
  if (( ! ok )); then
    tail -n 20 /tmp/start-local-slurm-apt.log >&2
    skip "apt-get could not install slurm-wlm and munge (no package mirror reachable?); log: /tmp/start-local-slurm-apt.log"
  fi
fi

# --- munge -------------------------------------------------------------------------------------------------------
id munge >/dev/null 2>&1 || fail "the munge package created no munge user"
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --force || fail "munged did not start"
  for _ in $(seq 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
  munge -n </dev/null | unmunge >/dev/null || fail "munge does not work"
fi

# --- slurm.conf --------------------------------------------------------------------------------------------------
# The real CPU count and memory (slurmd drains a node that has less than its configured RealMemory).
read -r CPUS SOCKETS CORES THREADS MEM_MB < <(slurmd -C | awk '/^NodeName=/ {
  for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  print v["CPUs"], v["SocketsPerBoard"], v["CoresPerSocket"], v["ThreadsPerCore"], v["RealMemory"] }')
[[ "$CPUS$SOCKETS$CORES$THREADS$MEM_MB" =~ ^[0-9]+$ ]] || fail "could not read CPUs / RealMemory from slurmd -C"

install -d -m 0755 "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/slurm
new_conf=$(cat <<EOF
$MARK
# A single-node SLURM for tests: munged, slurmctld and slurmd on localhost, all as root; no cgroups, no accounting.
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Requeue: allowed; a job is signalled SIGTERM, then SIGKILL KillWait seconds later (default 30).
JobRequeue=1
KillWait=30
# A requeued job may start again cred_expire + 1 s after it ended (default 120 s); the scheduler then runs every
# sched_interval s (default 60) or on events.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=5,bf_interval=5
# Keep finished jobs visible to scontrol / squeue for 5 minutes (tests read their state).
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)
changed=0
if [[ ! -f "$CONF" ]] || [[ "$(cat "$CONF")" != "$new_conf" ]]; then
  printf '%s\n' "$new_conf" >"$CONF"
  changed=1
  say "wrote $CONF (localhost: $CPUS CPUs, $MEM_MB MB)"
fi

# --- daemons -----------------------------------------------------------------------------------------------------
stop_daemon() {  # NAME PIDFILE: stop a daemon this script started (its pid file), wait for it to exit
  local pid
  pid=$(cat "$2" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  fail "$1 (pid $pid) did not stop"
}
if (( changed )) && { running slurmctld || running slurmd; }; then
  # `scontrol reconfigure` does not apply everything (AuthInfo=cred_expire, node sizes): restart them
  say "slurm.conf changed: restarting slurmctld and slurmd (job state is kept in /var/spool/slurmctld)"
  stop_daemon slurmd /run/slurm/slurmd.pid
  stop_daemon slurmctld /run/slurm/slurmctld.pid
fi
if ! running slurmctld; then
  say "starting slurmctld"
  slurmctld || fail "slurmctld did not start"
fi
if ! running slurmd; then
  say "starting slurmd"
  slurmd -N localhost || fail "slurmd did not start"
fi

deadline=$((SECONDS + READY_TIMEOUT))
state=""
while (( SECONDS < deadline )); do
  state=$(sinfo -h -n localhost -o '%T' 2>/dev/null || true)
  case "$state" in
    idle | mixed | allocated | completing) break ;;
    down* | drain*)  # e.g. after a restart with state saved from an earlier run
      scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
case "$state" in
  idle | mixed | allocated | completing) ;;
  *) fail "the node did not become idle within $READY_TIMEOUT s (sinfo: ${state:-no answer}; $(scontrol show node localhost 2>&1 | grep -o 'Reason=.*' || true))" ;;
esac
say "$(sinfo --version) is up: node localhost $state, $CPUS CPUs, $MEM_MB MB (partition debug)"
