#!/usr/bin/env bash
# Installs the system packages Draupnir needs on Debian (run as root):
# btrfs-progs (mkfs.btrfs), PostgreSQL server binaries, iptables, the
# OpenSSH clients (tests drive the SSH front door with them) and openssl
# (tests verify certificates with it).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in btrfs-progs postgresql iptables iproute2 util-linux openssh-client openssl ca-certificates; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  # Debian's postgresql package would start a default cluster; nothing here needs it.
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ls /usr/lib/postgresql/*/bin/postgres >/dev/null
echo "system packages ready: $(ls /usr/lib/postgresql | tr '\n' ' ')"
