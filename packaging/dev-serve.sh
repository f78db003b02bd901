#!/usr/bin/env bash
# Newcomer's daemon: install what Draupnir needs, build it, and run it with
# a development config made from config.toml.example: data on a 20G sparse
# btrfs file it creates itself, and your own SSH public key as the admin key
# (~/.ssh/id_ed25519 is generated, and named, if you have no key), so that
#   ssh -p 2222 localhost help
# works right away, and the HTTPS API on https://localhost:8443 with a random
# shared_secret (the upload user's token) in dev/config.toml. Run as root
# (sudo keeps your own ~/.ssh).
set -euo pipefail
cd "$(dirname "$0")/.."
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

mkdir -p dev
config=dev/config.toml
if [ ! -f "$config" ]; then
  pub="$(head -n1 "$key")"
  secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  sed -e "s|^admin_keys = \[\]|admin_keys = [\"$pub\"]|" \
      -e "s|^# shared_secret = .*|shared_secret = \"$secret\"|" \
      -e "s|^environment = \"production\"|environment = \"development\"|" \
      config.toml.example > "$config"
  echo "wrote $config with $key as the admin key"
fi

cargo build --release
exec ./target/release/draupnir serve --config "$config"
