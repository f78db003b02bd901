#!/usr/bin/env bash
# Newcomer's daemon: install what Draupnir needs, build it, and run it in
# the foreground (Ctrl-C stops it) with a development config made from
# config.toml.example: data on a 20G sparse btrfs file it creates itself
# under /var/lib/draupnir, the system user draupnir-instance (made at the
# first start) running each instance's postgres, and your own SSH public
# key as the admin key (~/.ssh/id_ed25519 is generated, and named, if you
# have no key), so that
#   ssh -p 2222 localhost help
# works right away, and the HTTPS API on https://localhost:8443 with a random
# shared_secret (the upload user's token) in dev/config.toml. It prints one
# line with an ssh and a curl to try once the daemon is ready. Run as root
# (sudo keeps your own ~/.ssh).
#
#   packaging/dev-serve.sh --remove
# removes everything it made: stops the daemon and the instances' postgres,
# unmounts and deletes data_path and state_path (the 20G file with them),
# deletes the instance user, the SSH host key and dev/config.toml. It keeps the system
# packages and your SSH key.
#
# DRAUPNIR_DEV_CONFIG names another config file (default dev/config.toml);
# DRAUPNIR_BIN runs an already-built binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${DRAUPNIR_DEV_CONFIG:-dev/config.toml}"
pidfile="$config.pid"

# The value of `key` in [section] ("" for the top) of the config.
conf() {
  awk -v want="$1" -v key="$2" '
    /^\[/ { section = substr($0, 2, index($0, "]") - 2); next }
    section == want && $1 == key && $2 == "=" {
      v = $0; sub(/^[^=]*=[ \t]*"/, "", v); sub(/".*$/, "", v); print v; exit
    }' "$config"
}

remove() {
  if [ ! -f "$config" ]; then
    echo "dev-serve: nothing to remove ($config does not exist)"
    return 0
  fi
  local data state user parent hostkey
  data="$(conf "" data_path)"
  state="$(conf "" state_path)"
  user="$(conf postgres instance_user)"
  if [ -f "$pidfile" ]; then
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      echo "dev-serve: stopping the daemon (pid $pid)"
      kill -TERM "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  fi
  if [ -n "$data" ] && [ -d "$data" ]; then
    # Instances keep running when the daemon stops: stop each postmaster
    # (fast shutdown), by the pid in its own postmaster.pid.
    local pids=()
    while IFS= read -r f; do
      local p
      p="$(head -n1 "$f" 2>/dev/null || true)"
      if [[ "$p" =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null; then pids+=("$p"); fi
    done < <(find "$data" -maxdepth 4 -name postmaster.pid 2>/dev/null)
    if [ "${#pids[@]}" -gt 0 ]; then
      echo "dev-serve: stopping ${#pids[@]} postgres (instances, standbys)"
      kill -INT "${pids[@]}" 2>/dev/null || true
      for _ in $(seq 100); do
        local alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
      done
      kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    if mountpoint -q "$data"; then umount "$data"; fi
    rm -rf -- "$data"
  fi
  if [ -n "$state" ]; then rm -rf -- "$state"; fi
  # /var/lib/draupnir itself, when nothing else is left in it.
  for d in "$data" "$state"; do
    [ -n "$d" ] || continue
    parent="$(dirname -- "$d")"
    rmdir -- "$parent" 2>/dev/null || true
  done
  # The instance user, and the user of sources' standbys if one was made.
  for u in "$user" draupnir-standby; do
    if [ -n "$u" ] && getent passwd "$u" >/dev/null; then
      userdel "$u" 2>/dev/null || true
      getent group "$u" >/dev/null && groupdel "$u" 2>/dev/null || true
    fi
  done
  # The SSH host key the daemon generated (relative: to the repository).
  hostkey="$(conf ssh host_key_path)"
  if [ -n "$hostkey" ]; then rm -f -- "$hostkey" "$hostkey.pub"; fi
  rm -f -- "$config"
  rmdir -- "$(dirname -- "$config")" 2>/dev/null || true
  echo "dev-serve: removed ${data:-?}, ${state:-?}, user ${user:-?}, the host key and $config (system packages and your SSH key stay)"
}

if [ "${1:-}" = "--remove" ]; then
  remove
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: packaging/dev-serve.sh [--remove]" >&2
  exit 2
fi

bash packaging/setup-debian.sh

user_home="$HOME"
if [ -n "${SUDO_USER:-}" ]; then user_home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"; fi
key=""
for k in "$user_home"/.ssh/id_ed25519.pub "$user_home"/.ssh/id_ecdsa.pub "$user_home"/.ssh/id_rsa.pub; do
  if [ -f "$k" ]; then key="$k"; break; fi
done
if [ -z "$key" ]; then
  mkdir -p "$user_home/.ssh" && chmod 700 "$user_home/.ssh"
  ssh-keygen -q -t ed25519 -N '' -C "draupnir-admin" -f "$user_home/.ssh/id_ed25519"
  if [ -n "${SUDO_USER:-}" ]; then chown "$SUDO_USER": "$user_home/.ssh" "$user_home"/.ssh/id_ed25519*; fi
  key="$user_home/.ssh/id_ed25519.pub"
  echo "you had no SSH key: generated ${key%.pub}, the admin key of this development daemon"
fi

mkdir -p "$(dirname -- "$config")"
if [ ! -f "$config" ]; then
  pub="$(head -n1 "$key")"
  secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  sed -e "s|^admin_keys = \[\]|admin_keys = [\"$pub\"]|" \
      -e "s|^# shared_secret = .*|shared_secret = \"$secret\"|" \
      -e "s|^environment = \"production\"|environment = \"development\"|" \
      config.toml.example > "$config"
  echo "wrote $config with $key as the admin key"
fi

if [ -n "${DRAUPNIR_BIN:-}" ]; then
  bin="$DRAUPNIR_BIN" # an already-built binary (as for build-deb.sh)
else
  # Where cargo puts the binary (CARGO_TARGET_DIR, .cargo/config.toml).
  cargo build --release
  target="$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  bin="$target/release/draupnir"
fi
if [ ! -x "$bin" ]; then
  echo "dev-serve: cargo built no binary at $bin" >&2
  exit 1
fi

ssh_port="$(conf ssh listen_address)"; ssh_port="${ssh_port##*:}"
http_port="$(conf http listen_address)"; http_port="${http_port##*:}"
ready="draupnir is ready: ssh -p ${ssh_port:-2222} localhost help   and   curl -sk https://localhost:${http_port:-8443}/health_check   (Ctrl-C stops it; packaging/dev-serve.sh --remove removes everything it made)"

# The daemon's log passes through; the ready line comes once both ports
# answer. Ctrl-C (or a TERM to this script) stops the daemon; its
# instances keep running until the next start adopts them or --remove.
"$bin" serve --config "$config" 2>&1 &
daemon=$!
echo "$daemon" > "$pidfile"
trap 'kill -TERM "$daemon" 2>/dev/null || true' INT TERM
wait_daemon() {
  local status=0
  while kill -0 "$daemon" 2>/dev/null; do
    wait "$daemon" || status=$?
  done
  rm -f "$pidfile"
  return "$status"
}
{
  for _ in $(seq 600); do
    if ! kill -0 "$daemon" 2>/dev/null; then exit 0; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/${ssh_port:-2222}") 2>/dev/null &&
       (exec 3<>"/dev/tcp/127.0.0.1/${http_port:-8443}") 2>/dev/null; then
      echo "$ready"
      exit 0
    fi
    sleep 0.2
  done
} &
wait_daemon
