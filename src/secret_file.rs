//! Secret files the daemon writes for itself (the SSH host key, the HTTPS
//! key and certificate): created mode 0600 and put in place atomically
//! (written to a temporary file, synced, renamed), so a crash never leaves
//! half a key and nobody else can ever read it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Write `data` to `path` as a private (0600) file, atomically.
pub fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data).and_then(|_| f.sync_all())?;
    std::fs::rename(&tmp, path)
}
