//! Path rules (SECURITY.md): what an archive or caller path may contain and
//! its normalised form, how a path is shown in a message (one short line),
//! the errors that carry a path, and joining and splitting normalised paths.

use std::io;

use super::IngestError;

/// Longest accepted path (bytes), in the archive and beneath the root.
pub(super) const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component (bytes).
const MAX_COMPONENT_BYTES: usize = 255;
/// Longest path shown in an error message (characters).
const MAX_SHOWN_PATH: usize = 200;

/// Validates an archive/caller path and returns its normalised form
/// (components joined by '/', without "." and empty components).
pub(super) fn normalize(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.contains(&0) {
        return Err("has a NUL byte in its path");
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err("has a path longer than 4096 bytes");
    }
    if raw.first() == Some(&b'/') {
        return Err("has an absolute path");
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("has a '..' component"),
            _ if comp.len() > MAX_COMPONENT_BYTES => {
                return Err("has a path component longer than 255 bytes");
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Ok(out)
}

/// Lossy, single-line, length-capped rendering of a path for messages.
pub(super) fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= MAX_SHOWN_PATH {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) fn bad_entry(path: &[u8], reason: impl Into<String>) -> IngestError {
    IngestError::BadEntry {
        path: show(path),
        reason: reason.into(),
    }
}

pub(super) fn bad_path(path: &[u8], reason: impl Into<String>) -> IngestError {
    IngestError::BadPath {
        path: show(path),
        reason: reason.into(),
    }
}

pub(super) fn io_err(path: &[u8], source: io::Error) -> IngestError {
    IngestError::Io {
        path: show(path),
        source,
    }
}

pub(super) fn join_rel(base: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    if !out.is_empty() && !rel.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(rel);
    out
}

pub(super) fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    }
}
#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::*;

    #[test]
    fn dotdot_in_plain_header() {
        let env = Env::new();
        for name in ["a/../b", "../escape", "..", "x/.."] {
            let r = env.extract(&archive(|a| file(a, name, b"pwned")));
            let msg = expect_bad_entry(r, "'..' component");
            assert_eq!(msg, format!("archive entry '{name}' has a '..' component"));
        }
        // Also as a directory entry.
        expect_bad_entry(env.extract(&archive(|a| dir(a, "../d/"))), "'..'");
        env.assert_contained();
        assert!(env.listing().is_empty());
    }

    #[test]
    fn absolute_paths() {
        let env = Env::new();
        let target = env.top.join("outside/abs");
        let name = target.to_str().unwrap();
        expect_bad_entry(env.extract(&archive(|a| file(a, name, b"x"))), "absolute");
        expect_bad_entry(env.extract(&archive(|a| dir(a, "/"))), "absolute");
        env.assert_contained();
    }

    #[test]
    fn nul_and_overlong_paths() {
        let env = Env::new();
        let r = env.extract(&archive(|a| {
            pax(a, &[("path", b"a\0/../../b")]);
            file(a, "x", b"x");
        }));
        expect_bad_entry(r, "NUL");
        let r = env.extract(&archive(|a| {
            long_name(a, b"ok\0/../../b");
            file(a, "x", b"x");
        }));
        expect_bad_entry(r, "NUL");
        let long = "a/".repeat(2100);
        let r = env.extract(&archive(|a| {
            long_name(a, long.as_bytes());
            file(a, "x", b"x");
        }));
        expect_bad_entry(r, "longer than 4096");
        let comp = "c".repeat(256);
        let r = env.extract(&archive(|a| {
            pax(a, &[("path", comp.as_bytes())]);
            file(a, "x", b"x");
        }));
        expect_bad_entry(r, "longer than 255");
        // 255 is fine.
        let ok = "c".repeat(255);
        env.extract(&archive(|a| {
            pax(a, &[("path", ok.as_bytes())]);
            file(a, "x", b"x");
        }))
        .unwrap();
        assert_eq!(env.listing(), [ok]);
        env.assert_contained();
    }

    #[test]
    fn messages_are_one_short_line() {
        let name = b"evil\nname/../x".to_vec();
        let e = bad_entry(&name, "has a '..' component");
        assert_eq!(
            e.to_string(),
            "archive entry 'evil\\nname/../x' has a '..' component"
        );
        let e = bad_entry(&vec![b'a'; 5000], "x");
        assert!(e.to_string().len() < 300);
        let e = io_err(b"base/1/1234", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(
            e.to_string(),
            "io error writing 'base/1/1234': No space left on device (os error 28)"
        );
    }
}
