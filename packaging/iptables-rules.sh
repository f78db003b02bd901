#!/usr/bin/env bash
# Example rules an operator adds once (e.g. via iptables-persistent) when
# `enable_ip_whitelisting = true`: new connections to the instance port range
# go through Draupnir's DRAUPNIR-WHITELIST chain, which accepts the addresses
# each instance's owner used; everything else on that range is dropped.
# Draupnir owns only that chain; it never edits INPUT.
#
# Usage: sudo bash packaging/iptables-rules.sh [MIN_PORT] [MAX_PORT_EXCLUSIVE]
set -euo pipefail
min="${1:-6432}"
max="$(( ${2:-7432} - 1 ))"
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  "$ipt" -N DRAUPNIR-WHITELIST 2>/dev/null || true
  # The daemon probes instances over loopback: keep it open.
  "$ipt" -C INPUT -i lo -j ACCEPT 2>/dev/null || "$ipt" -I INPUT 1 -i lo -j ACCEPT
  "$ipt" -C INPUT -p tcp --dport "$min:$max" -m conntrack --ctstate NEW -j DRAUPNIR-WHITELIST 2>/dev/null \
    || "$ipt" -A INPUT -p tcp --dport "$min:$max" -m conntrack --ctstate NEW -j DRAUPNIR-WHITELIST
  "$ipt" -C INPUT -p tcp --dport "$min:$max" -m conntrack --ctstate NEW -j DROP 2>/dev/null \
    || "$ipt" -A INPUT -p tcp --dport "$min:$max" -m conntrack --ctstate NEW -j DROP
done
echo "instance ports $min-$max now only accept addresses in DRAUPNIR-WHITELIST"
