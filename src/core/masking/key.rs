//! The per-deployment masking key: 32 random bytes generated once into
//! `state_path/masking.key` (mode 0600, owned by the daemon's user, root),
//! read at each use, and refused when the file's mode, owner or size is
//! wrong. The bytes are held in a [`Secret`] and leave it only as the two
//! HMAC pads bound to a masking statement's parameters. Rotation (a new
//! file, hence new masked values for every later image) is `draupnir
//! rotate-masking-key` ([`MaskingKey::rotate`]).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::secret::Secret;

/// File name of the key under `state_path`.
pub const KEY_FILE: &str = "masking.key";

/// Bytes in a key.
pub const KEY_LEN: usize = 32;

/// SHA-256's block size: HMAC pads the key to it.
const BLOCK: usize = 64;

/// Why the key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("masking key {path}: {action}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("masking key {path}: mode {mode:04o}, must be 0600")]
    Mode { path: PathBuf, mode: u32 },
    #[error("masking key {path}: owned by uid {uid}, must be uid {expected}")]
    Owner {
        path: PathBuf,
        uid: u32,
        expected: u32,
    },
    #[error("masking key {path}: {len} bytes, must be {KEY_LEN}")]
    Size { path: PathBuf, len: u64 },
    #[error("masking key {path}: not a regular file")]
    NotAFile { path: PathBuf },
}

/// The masking key.
#[derive(Debug, Clone)]
pub struct MaskingKey(Secret<[u8; KEY_LEN]>);

/// The HMAC pads of a key, bound as `$1` (ipad) and `$2` (opad) of a
/// masking statement.
#[derive(Debug, Clone)]
pub struct Pads {
    pub ipad: Secret<Vec<u8>>,
    pub opad: Secret<Vec<u8>>,
}

impl MaskingKey {
    /// A key from its bytes (tests, and a later rotation command).
    #[cfg(any(test, feature = "test-support"))]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> MaskingKey {
        MaskingKey(Secret::new(bytes))
    }

    /// The key at `state_path/masking.key`, generated there first when
    /// there is none.
    pub fn load_or_create(state_path: &Path) -> Result<MaskingKey, KeyError> {
        let path = state_path.join(KEY_FILE);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(&path),
            _ => Self::load(&path),
        }
    }

    /// Read the key at `path`, checking mode, owner and size.
    pub fn load(path: &Path) -> Result<MaskingKey, KeyError> {
        let io = |action| {
            move |source| KeyError::Io {
                path: path.to_path_buf(),
                action,
                source,
            }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io("open"))?;
        let meta = file.metadata().map_err(io("stat"))?;
        check(path, &meta)?;
        let mut bytes = [0u8; KEY_LEN];
        std::io::Read::read_exact(&mut &file, &mut bytes).map_err(io("read"))?;
        Ok(MaskingKey(Secret::new(bytes)))
    }

    /// Generate a key into `path`: written to a temporary file with mode
    /// 0600, synced, then hard-linked into place, which fails when another
    /// process created the key first; that key is then read instead, so
    /// every image of a deployment uses one key.
    pub fn create(path: &Path) -> Result<MaskingKey, KeyError> {
        let io = |action| {
            move |source| KeyError::Io {
                path: path.to_path_buf(),
                action,
                source,
            }
        };
        let mut bytes = [0u8; KEY_LEN];
        rand::fill(&mut bytes);
        let tmp = path.with_extension(format!(
            "new.{}.{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(io("create"))?;
            f.write_all(&bytes).map_err(io("write"))?;
            f.sync_all().map_err(io("sync"))?;
            Ok::<_, KeyError>(std::fs::hard_link(&tmp, path))
        })();
        let _ = std::fs::remove_file(&tmp);
        match written? {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Self::load(path),
            Err(e) => return Err(io("link")(e)),
        }
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync directory"))?;
        }
        Ok(MaskingKey(Secret::new(bytes)))
    }

    /// Replace the key at `state_path/masking.key` with a new one (the
    /// old bytes are gone: masked values of later images change). Written
    /// to a temporary file with mode 0600, synced, then renamed over the
    /// old one. Returns the key file's path.
    pub fn rotate(state_path: &Path) -> Result<PathBuf, KeyError> {
        let path = state_path.join(KEY_FILE);
        let tmp = path.with_extension(format!("rotate.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        Self::create(&tmp)?;
        let io = |action| {
            let path = path.clone();
            move |source| KeyError::Io {
                path,
                action,
                source,
            }
        };
        std::fs::rename(&tmp, &path).map_err(io("replace"))?;
        std::fs::File::open(state_path)
            .and_then(|d| d.sync_all())
            .map_err(io("sync directory"))?;
        Self::load(&path)?;
        Ok(path)
    }

    /// The key padded to 64 bytes and XORed with 0x36 (ipad) and 0x5c
    /// (opad), as RFC 2104 builds HMAC.
    pub fn pads(&self) -> Pads {
        let mut ipad = vec![0x36u8; BLOCK];
        let mut opad = vec![0x5cu8; BLOCK];
        for (i, b) in self.0.expose().iter().enumerate() {
            ipad[i] ^= b;
            opad[i] ^= b;
        }
        Pads {
            ipad: Secret::new(ipad),
            opad: Secret::new(opad),
        }
    }

    /// HMAC-SHA256 of `tag ':' message`, the value the SQL of
    /// [`super::transform::hmac`] computes (for checks and the leak scan).
    #[cfg(any(test, feature = "test-support"))]
    pub fn hmac(&self, tag: &str, message: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let pads = self.pads();
        let inner = Sha256::new()
            .chain_update(pads.ipad.expose())
            .chain_update(tag.as_bytes())
            .chain_update(b":")
            .chain_update(message.as_bytes())
            .finalize();
        Sha256::new()
            .chain_update(pads.opad.expose())
            .chain_update(inner)
            .finalize()
            .into()
    }
}

fn check(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyError> {
    if !meta.file_type().is_file() {
        return Err(KeyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode != 0o600 {
        return Err(KeyError::Mode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let expected = nix::unistd::geteuid().as_raw();
    if meta.uid() != expected {
        return Err(KeyError::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            expected,
        });
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(KeyError::Size {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn created_once_then_read_back() {
        let d = dir();
        let a = MaskingKey::load_or_create(d.path()).unwrap();
        let path = d.path().join(KEY_FILE);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let b = MaskingKey::load_or_create(d.path()).unwrap();
        assert_eq!(a.0.expose(), b.0.expose());
        assert_eq!(format!("{a:?}"), "MaskingKey([redacted])");
        let other = MaskingKey::load_or_create(dir().path()).unwrap();
        assert_ne!(a.0.expose(), other.0.expose(), "random per deployment");
        // A second creator finds the key in place and uses it.
        let c = MaskingKey::create(&path).unwrap();
        assert_eq!(a.0.expose(), c.0.expose());
        let leftovers: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");
    }

    #[test]
    fn wrong_mode_size_owner_or_symlink_is_refused() {
        let d = dir();
        MaskingKey::load_or_create(d.path()).unwrap();
        let path = d.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = MaskingKey::load_or_create(d.path()).unwrap_err();
        assert!(matches!(e, KeyError::Mode { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().ends_with("mode 0644, must be 0600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [1u8; 31]).unwrap();
        let e = MaskingKey::load(&path).unwrap_err();
        assert!(matches!(e, KeyError::Size { len: 31, .. }), "{e}");
        std::fs::write(&path, [1u8; 32]).unwrap();
        MaskingKey::load(&path).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = MaskingKey::load(&path).unwrap_err();
            assert!(matches!(e, KeyError::Owner { uid: 65534, .. }), "{e}");
        }
        let link = d.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = MaskingKey::load(&link).unwrap_err();
        assert!(matches!(e, KeyError::Io { action: "open", .. }), "{e}");
    }

    #[test]
    fn hmac_is_rfc_2104_over_tag_and_message() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        let key = MaskingKey::from_bytes(bytes);
        // python3: hmac.new(bytes(range(1, 33)), b"email:alice@example.com", sha256)
        assert_eq!(
            hex::encode(key.hmac("email", "alice@example.com")),
            "69c6ce6263a3c1a0f9238aaad4cba1cb9d01f4df5cfdfc16dacd53174a600a1c"
        );
        let pads = key.pads();
        assert_eq!(pads.ipad.expose().len(), 64);
        assert_eq!(pads.ipad.expose()[0], 0x37);
        assert_eq!(pads.opad.expose()[63], 0x5c);
    }
}
