#!/usr/bin/env bash
# Install and start the real services the tests use, on a fresh Debian root machine:
# an OpenSSH sshd on 127.0.0.1:$SSHD_PORT (default 2222) for dedicated users, git-lfs, a
# single-node Slurm cluster (munged, slurmctld, slurmd; no systemd, no accounting), and
# Chromium for the web tests.
# Usage: SVC=$(mktemp -d) bash .ci/services.sh; source "$SVC/env.sh"; ...; bash "$SVC/stop.sh"
set -euo pipefail
SVC=${SVC:-$(mktemp -d -t expegit-svc.XXXXXX)}
PORT=${SSHD_PORT:-2222}  # another port lets a second set of services run beside a first
mkdir -p "$SVC"
export DEBIAN_FRONTEND=noninteractive
PKGS="openssh-server openssh-client git git-lfs man-db faketime tcsh munge slurm-wlm"
# Debian's Chromium for the web interface's browser tests (Playwright drives it; it cannot
# download a browser here). WITH_CHROMIUM=0 leaves it out.
if [ "${WITH_CHROMIUM:-1}" = 1 ]; then PKGS="$PKGS chromium"; fi
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $PKGS >"$SVC/apt.log" 2>&1 || { tail -30 "$SVC/apt.log"; exit 1; }
fi

# sshd for a dedicated user: root's ~/.bashrc (pyenv) costs ~150 ms per ssh command here.
id expegit-test >/dev/null 2>&1 || useradd -m -s /bin/bash expegit-test
usermod -p '*' expegit-test            # a '!'-locked account is refused when UsePAM is off
# A user whose login shell is tcsh and whose shell startup prints, as module banners on
# clusters do, on stdout and stderr: runaway must run under /bin/sh and set the noise aside.
id expegit-tcsh >/dev/null 2>&1 || useradd -m -s /usr/bin/tcsh expegit-tcsh
usermod -p '*' -s /usr/bin/tcsh expegit-tcsh
printf 'echo "Welcome: module banner on stdout"\necho "module banner on stderr" > /dev/stderr\n' \
  >"$(getent passwd expegit-tcsh | cut -d: -f6)/.tcshrc"
mkdir -p /run/sshd "$SVC/ssh"
rm -f "$SVC/ssh/host_ed25519"* "$SVC/ssh/id_ed25519"*
ssh-keygen -q -t ed25519 -N '' -f "$SVC/ssh/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -f "$SVC/ssh/id_ed25519" -C expegit-ci
cp "$SVC/ssh/id_ed25519.pub" "$SVC/ssh/authorized_keys"
chmod 644 "$SVC/ssh/authorized_keys"
chmod 755 "$SVC" "$SVC/ssh"
cat >"$SVC/ssh/sshd_config" <<EOC
Port $PORT
ListenAddress 127.0.0.1
HostKey $SVC/ssh/host_ed25519
PidFile $SVC/ssh/sshd.pid
AuthorizedKeysFile $SVC/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
MaxSessions 100
MaxStartups 100:30:200
EOC
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$SVC/ssh/host_ed25519.pub")" >"$SVC/ssh/known_hosts"
cat >"$SVC/ssh/config" <<EOC
Host testhost
  HostName 127.0.0.1
  Port $PORT
  User expegit-test
  IdentityFile $SVC/ssh/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SVC/ssh/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
Host tcshhost
  HostName 127.0.0.1
  Port $PORT
  User expegit-tcsh
  IdentityFile $SVC/ssh/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SVC/ssh/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
Host jumphost
  HostName 127.0.0.1
  Port $PORT
  User expegit-test
  IdentityFile $SVC/ssh/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SVC/ssh/known_hosts
  ProxyJump testhost
  BatchMode yes
EOC
[ -s "$SVC/ssh/sshd.pid" ] && kill "$(cat "$SVC/ssh/sshd.pid")" 2>/dev/null || true
/usr/sbin/sshd -f "$SVC/ssh/sshd_config" -E "$SVC/ssh/sshd.log"
for _ in $(seq 50); do ssh -F "$SVC/ssh/config" testhost true 2>/dev/null && break; sleep 0.1; done
ssh -F "$SVC/ssh/config" testhost 'echo "sshd ok: $(whoami)@$(hostname)"'

# Slurm, single node (see ../shared/reference/test-infrastructure.md §4 and §8). Its config,
# /etc/slurm/slurm.conf, and its ports are global to the machine: when a cluster already runs
# (started by another set of services), this set uses it and leaves it alone; only the daemons
# started here get a PID file under $SVC/slurm, and only those are stopped by $SVC/stop.sh.
mkdir -p "$SVC/slurm/state" "$SVC/slurm/spool"
for f in "$SVC/slurm/"*.pid; do  # a rerun on the same $SVC keeps the PID files of live daemons
  [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null || rm -f "$f"
done
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  mkdir -p /run/munge && chown munge:munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create 2>/dev/null || create-munge-key -f
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged  # daemonizes; its PID file is /run/munge/munged.pid
  cp /run/munge/munged.pid "$SVC/slurm/munged.pid"
fi
munge -n | unmunge >/dev/null
if pgrep -x slurmctld >/dev/null; then
  if [ -s "$SVC/slurm/slurmctld.pid" ]; then echo "slurm: already runs from $SVC"
  else echo "slurm: a cluster started elsewhere runs; using it, and $SVC/stop.sh will not stop it"; fi
else
  H=$(hostname -s)
  MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))  # MiB, with room for the OS
  [ "$MEM" -ge 256 ] || MEM=256
  mkdir -p /etc/slurm
  cat >/etc/slurm/slurm.conf <<EOC
# Written by $PWD/.ci/services.sh for SVC=$SVC
ClusterName=expegit
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cgroups are a v1/v2 hybrid without systemd here: track processes without them
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile=$SVC/slurm/slurmctld.pid
SlurmdPidFile=$SVC/slurm/slurmd.pid
StateSaveLocation=$SVC/slurm/state
SlurmdSpoolDir=$SVC/slurm/spool
SlurmctldLogFile=$SVC/slurm/slurmctld.log
SlurmdLogFile=$SVC/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# No accounting (sacct needs slurmdbd and MariaDB): scontrol and the job comp log tell the end
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SVC/slurm/jobcomp.log
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=$H NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
EOC
  /usr/sbin/slurmctld  # both daemonize and write their PID files
fi
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
# The node registers within a few seconds; poll until it takes jobs.
for _ in $(seq 300); do
  [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break
  sleep 0.1
done
if [ "$(sinfo -h -o %T 2>/dev/null)" != idle ]; then
  echo "slurm: the node is not idle after 30 s:" >&2
  sinfo >&2 || true
  tail -20 "$SVC/slurm/slurmctld.log" "$SVC/slurm/slurmd.log" >&2 2>/dev/null || true
  exit 1
fi
PARTITION=$(sinfo -h -o %R | head -1)
echo "slurm ok: partition $PARTITION, $(sinfo -h -o '%N %c CPUs %m MB')"

cat >"$SVC/env.sh" <<EOC
export EXPEGIT_TEST_SSH_CONFIG=$SVC/ssh/config
export EXPEGIT_TEST_SSH_HOST=testhost
export EXPEGIT_TEST_SSH_TCSH_HOST=tcshhost
export EXPEGIT_TEST_SLURM=1
export EXPEGIT_TEST_SLURM_PARTITION=$PARTITION
EOC
cat >"$SVC/stop.sh" <<EOC
#!/bin/bash
# Stop every service started by this set by PID, newest first (slurmctld takes ~5 s to exit).
for f in $SVC/slurm/slurmd.pid $SVC/slurm/slurmctld.pid $SVC/slurm/munged.pid $SVC/ssh/sshd.pid; do
  [ -s "\$f" ] || continue
  pid=\$(cat "\$f"); kill "\$pid" 2>/dev/null || continue
  for _ in \$(seq 300); do kill -0 "\$pid" 2>/dev/null || break; sleep 0.1; done
done
EOC
echo "SVC=$SVC"
