//! The virtual file tree SFTP and `scp -t` see: `/` holds `images/`,
//! `images/` one directory per image id, and `images/<id>/…` is the upload
//! target of that image. Owns path normalisation: every client path is
//! resolved here, and anything that would leave the tree is refused.

use crate::core::ImageId;
use std::path::PathBuf;

/// A resolved place in the virtual tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VPath {
    /// `/`
    Root,
    /// `/images`
    Images,
    /// `/images/<id>`
    Image(ImageId),
    /// `/images/<id>/<rel>` (`rel` has only normal components, at least one)
    InImage(ImageId, PathBuf),
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("`{0}` is outside the Draupnir tree (only images/<id>/ exists)")]
    Outside(String),
    #[error("no such image `{0}`")]
    NoSuchImage(String),
    #[error("invalid path `{0}`")]
    Invalid(String),
}

/// Longest path accepted, in bytes.
const MAX_PATH: usize = 4096;

/// Resolve a client path. Relative paths are relative to `/` (a client's
/// `~/images/1` arrives as `images/1`); `.` and empty are `/`; `..` may
/// move up inside the tree but never above `/`.
pub fn resolve(path: &str) -> Result<VPath, PathError> {
    let shown = || path.chars().take(200).collect::<String>();
    if path.len() > MAX_PATH || path.contains('\0') {
        return Err(PathError::Invalid(shown()));
    }
    let rest = path
        .strip_prefix("~/")
        .or_else(|| (path == "~").then_some(""))
        .unwrap_or(path);
    let mut parts: Vec<&str> = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathError::Outside(shown()));
                }
            }
            p => parts.push(p),
        }
    }
    let mut it = parts.into_iter();
    match it.next() {
        None => return Ok(VPath::Root),
        Some("images") => {}
        Some(_) => return Err(PathError::Outside(shown())),
    }
    let Some(id) = it.next() else {
        return Ok(VPath::Images);
    };
    let id = parse_id(id).ok_or_else(|| PathError::NoSuchImage(id.chars().take(40).collect()))?;
    let rel: PathBuf = it.collect();
    if rel.as_os_str().is_empty() {
        Ok(VPath::Image(id))
    } else {
        Ok(VPath::InImage(id, rel))
    }
}

fn parse_id(s: &str) -> Option<ImageId> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().filter(|n| *n > 0).map(ImageId::new)
}

impl VPath {
    /// The canonical absolute form (REALPATH's answer).
    pub fn display(&self) -> String {
        match self {
            VPath::Root => "/".into(),
            VPath::Images => "/images".into(),
            VPath::Image(id) => format!("/images/{id}"),
            VPath::InImage(id, rel) => format!("/images/{id}/{}", rel.display()),
        }
    }

    /// `self/name` for one file name sent by a client (`scp` records).
    pub fn join_name(&self, name: &str) -> Result<VPath, PathError> {
        if !valid_name(name) {
            return Err(PathError::Invalid(name.chars().take(200).collect()));
        }
        match self {
            VPath::Root if name == "images" => Ok(VPath::Images),
            VPath::Root => Err(PathError::Outside(name.into())),
            VPath::Images => parse_id(name)
                .map(VPath::Image)
                .ok_or_else(|| PathError::NoSuchImage(name.into())),
            VPath::Image(id) => Ok(VPath::InImage(*id, PathBuf::from(name))),
            VPath::InImage(id, rel) => Ok(VPath::InImage(*id, rel.join(name))),
        }
    }
}

/// One path component as a client may name a file: not empty, not `.` or
/// `..`, no `/`, NUL or control characters, at most 255 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains('/')
        && !name.chars().any(|c| c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_inside_the_tree() {
        assert_eq!(resolve(".").unwrap(), VPath::Root);
        assert_eq!(resolve("").unwrap(), VPath::Root);
        assert_eq!(resolve("/").unwrap(), VPath::Root);
        assert_eq!(resolve("images").unwrap(), VPath::Images);
        assert_eq!(resolve("/images/").unwrap(), VPath::Images);
        assert_eq!(resolve("images/3").unwrap(), VPath::Image(ImageId::new(3)));
        assert_eq!(
            resolve("~/images/3/").unwrap(),
            VPath::Image(ImageId::new(3))
        );
        assert_eq!(
            resolve("/images/3/./a/../b").unwrap(),
            VPath::InImage(ImageId::new(3), "b".into())
        );
        assert_eq!(
            resolve("images/3/x/y").unwrap(),
            VPath::InImage(ImageId::new(3), "x/y".into())
        );
        assert_eq!(resolve("images/3/..").unwrap(), VPath::Images);
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(resolve(".."), Err(PathError::Outside(_))));
        assert!(matches!(resolve("../x"), Err(PathError::Outside(_))));
        assert!(matches!(resolve("/etc/passwd"), Err(PathError::Outside(_))));
        assert!(matches!(
            resolve("images/../../x"),
            Err(PathError::Outside(_))
        ));
        assert!(matches!(
            resolve("images/1/../../../etc"),
            Err(PathError::Outside(_))
        ));
        assert!(matches!(
            resolve("images/abc"),
            Err(PathError::NoSuchImage(_))
        ));
        assert!(matches!(
            resolve("images/0"),
            Err(PathError::NoSuchImage(_))
        ));
        assert!(matches!(
            resolve("images/1/a\0b"),
            Err(PathError::Invalid(_))
        ));
    }

    #[test]
    fn names() {
        assert!(valid_name("base.tar.gz"));
        for bad in ["", ".", "..", "a/b", "a\nb", "../x"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(
            VPath::Image(ImageId::new(1))
                .join_name("pg_wal.tar")
                .unwrap(),
            VPath::InImage(ImageId::new(1), "pg_wal.tar".into())
        );
        assert!(VPath::Image(ImageId::new(1)).join_name("..").is_err());
    }
}
