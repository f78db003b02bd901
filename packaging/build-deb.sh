#!/usr/bin/env bash
# Builds the Debian package with dpkg-deb from a staged tree (no cargo-deb
# needed; `cargo deb` also works from the [package.metadata.deb] section of
# Cargo.toml, but this script is what tests and releases use).
#
# Usage: packaging/build-deb.sh [OUT_DIR]        (default: target/debian)
# Env:   DRAUPNIR_BIN=path  package this binary instead of running
#                           `cargo build --release`
# Prints the path of the .deb it wrote.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
out="${1:-$repo/target/debian}"
bin="${DRAUPNIR_BIN:-}"
if [ -z "$bin" ]; then
  (cd "$repo" && cargo build --release --locked >&2)
  bin="$repo/target/release/draupnir"
fi
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$bin" "$stage/usr/bin/draupnir"
install -D -m 0640 "$repo/config.toml.example" "$stage/etc/draupnir/config.toml"
# The example's host key path is relative (to the working directory); the
# packaged config names the key's place under /var/lib/draupnir.
sed -i 's|^host_key_path = "keys/ssh_host_ed25519_key"|host_key_path = "/var/lib/draupnir/keys/ssh_host_ed25519_key"|' \
  "$stage/etc/draupnir/config.toml"
grep -q '^host_key_path = "/var/lib/draupnir/keys/' "$stage/etc/draupnir/config.toml"
install -D -m 0644 "$here/draupnir.service" "$stage/lib/systemd/system/draupnir.service"
install -D -m 0755 "$here/iptables-rules.sh" "$stage/usr/share/draupnir/iptables-rules.sh"
install -D -m 0644 "$repo/README.md" "$stage/usr/share/doc/draupnir/README.md"
mkdir -p "$stage/usr/share/bash-completion/completions" \
  "$stage/usr/share/zsh/vendor-completions" \
  "$stage/usr/share/fish/vendor_completions.d" \
  "$stage/usr/share/man/man1"
"$bin" completions bash >"$stage/usr/share/bash-completion/completions/draupnir"
"$bin" completions zsh >"$stage/usr/share/zsh/vendor-completions/_draupnir"
"$bin" completions fish >"$stage/usr/share/fish/vendor_completions.d/draupnir.fish"
"$bin" man | gzip -9n >"$stage/usr/share/man/man1/draupnir.1.gz"
cat >"$stage/usr/share/doc/draupnir/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: draupnir
License: Apache-2.0
COPY
chmod 0644 "$stage"/usr/share/bash-completion/completions/draupnir \
  "$stage"/usr/share/zsh/vendor-completions/_draupnir \
  "$stage"/usr/share/fish/vendor_completions.d/draupnir.fish \
  "$stage"/usr/share/man/man1/draupnir.1.gz \
  "$stage"/usr/share/doc/draupnir/copyright

mkdir -p "$stage/DEBIAN"
install -m 0755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$stage/DEBIAN/"
echo "/etc/draupnir/config.toml" >"$stage/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat >"$stage/DEBIAN/control" <<CONTROL
Package: draupnir
Version: $version
Architecture: $arch
Maintainer: Draupnir maintainers <draupnir@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34), btrfs-progs, iptables, passwd, postgresql | postgresql-17 | postgresql-16 | postgresql-15 | postgresql-14 | postgresql-13
Section: database
Priority: optional
Description: fresh, anonymised, private PostgreSQL instances in under a second
 Draupnir keeps anonymised images of a production PostgreSQL database on
 btrfs and hands out copy-on-write instances of them, each with its own
 postmaster and client certificate, over SSH and a JSON HTTPS API.
CONTROL

mkdir -p "$out"
deb="$out/draupnir_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >&2
echo "$deb"
