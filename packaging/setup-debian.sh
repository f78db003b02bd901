#!/usr/bin/env bash
# Installs the system packages Draupnir needs on Debian (run as root):
# btrfs-progs (mkfs.btrfs), PostgreSQL server binaries, iptables, the
# OpenSSH clients (tests drive the SSH front door with them), the OpenSSH
# server (the upload benchmark's baseline runs its own `sshd` on a loopback
# port with its own config) and openssl (tests verify certificates with it).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in btrfs-progs postgresql iptables iproute2 util-linux openssh-client openssh-server openssl ca-certificates gdb; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  # Debian's postgresql and openssh-server packages would start a default
  # cluster and a system sshd on port 22; nothing here needs either, so
  # keep invoke-rc.d from starting services during this install (unless a
  # policy is already in place, as in Docker images).
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ls /usr/lib/postgresql/*/bin/postgres >/dev/null
echo "system packages ready: $(ls /usr/lib/postgresql | tr '\n' ' ')"
