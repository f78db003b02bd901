//! The SSH host key: loaded from `[ssh] host_key_path`, or generated
//! (ed25519, OpenSSH private key format, mode 0600, parent directory
//! created) on first start and reused after, so clients see one stable
//! identity across restarts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

use super::SshError;

/// Load the host key at `path`, generating it first when the file does not
/// exist. Returns the key; its fingerprint is logged.
pub fn load_or_generate(path: &Path) -> Result<PrivateKey, SshError> {
    let err = |what: &'static str| {
        let path: PathBuf = path.to_owned();
        move |e: std::io::Error| SshError::HostKey {
            path,
            reason: format!("{what}: {e}"),
        }
    };
    let key = match std::fs::read(path) {
        Ok(bytes) => {
            let key = PrivateKey::from_openssh(&bytes).map_err(|e| SshError::HostKey {
                path: path.to_owned(),
                reason: format!("not an OpenSSH private key: {e}"),
            })?;
            if key.is_encrypted() {
                return Err(SshError::HostKey {
                    path: path.to_owned(),
                    reason: "the key is encrypted; use a key without a passphrase".into(),
                });
            }
            let mode = std::fs::metadata(path)
                .map_err(err("cannot stat"))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "host key is readable by others; fixing to 0600");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(err("cannot chmod"))?;
            }
            key
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate(path)?,
        Err(e) => return Err(err("cannot read")(e)),
    };
    tracing::info!(
        path = %path.display(),
        fingerprint = %key.fingerprint(HashAlg::Sha256),
        "ssh host key"
    );
    Ok(key)
}

fn generate(path: &Path) -> Result<PrivateKey, SshError> {
    let fail = |reason: String| SshError::HostKey {
        path: path.to_owned(),
        reason,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
    }
    let seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment("draupnir host key");
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| fail(format!("cannot encode: {e}")))?;
    crate::secret_file::write(path, text.as_bytes())
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "generated a new ssh host key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/host");
        let a = load_or_generate(&path).expect("generate");
        let b = load_or_generate(&path).expect("reload");
        assert_eq!(
            a.fingerprint(HashAlg::Sha256),
            b.fingerprint(HashAlg::Sha256)
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    }
}
