//! Doctor's host checks: the SSH host key and the system clock.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;

use super::{fail, pass, Check};
use crate::config::Config;

pub(super) fn host_key(config: &Config) -> Check {
    const NAME: &str = "host key";
    let path = &config.ssh.host_key_path;
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return pass(
                NAME,
                format!("{} absent: generated on first start", path.display()),
            )
        }
        Err(e) => {
            return fail(
                NAME,
                format!("cannot read {}: {e}", path.display()),
                "make it readable by root",
            )
        }
    };
    let key = match russh::keys::PrivateKey::from_openssh(&bytes) {
        Ok(k) if !k.is_encrypted() => k,
        Ok(_) => {
            return fail(
                NAME,
                format!("{} is encrypted", path.display()),
                format!(
                    "remove it (a new one is generated at start) or ssh-keygen -p -N '' -f {}",
                    path.display()
                ),
            )
        }
        Err(e) => {
            return fail(
                NAME,
                format!("{} is not an OpenSSH private key: {e}", path.display()),
                format!(
                    "ssh-keygen -t ed25519 -N '' -f {} (clients will see a new host key)",
                    path.display()
                ),
            )
        }
    };
    let fingerprint = key.fingerprint(russh::keys::HashAlg::Sha256);
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    if mode & 0o077 != 0 {
        return fail(
            NAME,
            format!("{} has mode {mode:o} ({fingerprint})", path.display()),
            format!("chmod 600 {}", path.display()),
        );
    }
    pass(
        NAME,
        format!("{} {} {fingerprint}", path.display(), key.algorithm()),
    )
}

pub(super) fn clock() -> Check {
    const NAME: &str = "clock";
    let build_year: i32 = env!("DRAUPNIR_BUILD_YEAR").parse().unwrap_or(1970);
    let now = crate::core::store::now();
    if now.year() >= build_year {
        pass(
            NAME,
            format!("{} (UTC)", crate::core::store::format_ts(now)),
        )
    } else {
        fail(
            NAME,
            format!(
                "{} is before this build's year ({build_year})",
                crate::core::store::format_ts(now)
            ),
            "set the clock (timedatectl set-ntp true); certificates and TTLs depend on it",
        )
    }
}
