#!/usr/bin/env bash
# Install and start the real services the tests use, on a fresh Debian root machine:
# an OpenSSH sshd on 127.0.0.1:$SSHD_PORT (default 2222) for dedicated users, and git-lfs.
# Usage: SVC=$(mktemp -d) bash .ci/services.sh; source "$SVC/env.sh"; ...; bash "$SVC/stop.sh"
set -euo pipefail
SVC=${SVC:-$(mktemp -d -t expegit-svc.XXXXXX)}
PORT=${SSHD_PORT:-2222}  # another port lets a second set of services run beside a first
mkdir -p "$SVC"
export DEBIAN_FRONTEND=noninteractive
PKGS="openssh-server openssh-client git git-lfs man-db faketime tcsh"
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

cat >"$SVC/env.sh" <<EOC
export EXPEGIT_TEST_SSH_CONFIG=$SVC/ssh/config
export EXPEGIT_TEST_SSH_HOST=testhost
export EXPEGIT_TEST_SSH_TCSH_HOST=tcshhost
EOC
cat >"$SVC/stop.sh" <<EOC
#!/bin/bash
# Stop every service by PID, newest first.
for f in $SVC/ssh/sshd.pid; do
  [ -s "\$f" ] || continue
  pid=\$(cat "\$f"); kill "\$pid" 2>/dev/null || continue
  for _ in \$(seq 100); do kill -0 "\$pid" 2>/dev/null || break; sleep 0.1; done
done
EOC
echo "SVC=$SVC"
