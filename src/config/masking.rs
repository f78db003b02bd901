//! The `[masking]` section: where the nightly job's masking rules are and
//! whether every column must be covered. The rules file is read and
//! parsed when the configuration is loaded (at start and on SIGHUP), so a
//! rules file that does not parse is refused with its line, and the
//! daemon keeps running on the text it last accepted.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::reload_class::config_section;
use super::ConfigError;

/// Largest rules file accepted.
pub const MAX_RULES_BYTES: u64 = 4 << 20;

config_section! {
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct MaskingConfig (prefix "masking.") {
        /// The masking rules every image gets (TOML; see the README's
        /// "Masking"). An image's own rules replace the same tables'.
        live rules_file: Option<PathBuf>,
        /// The text of `rules_file` as read at the last (re)load.
        #[serde(skip)]
        live rules: Option<Arc<str>>,
        /// Refuse to seal an image while any column of any table has no
        /// rule (fail closed). `false` seals it anyway, marked `unchecked`.
        live require_coverage: bool,
        /// The leak scan searches a table larger than this for originals in
        /// a random sample of about this many bytes of its pages (so a
        /// finalise or refresh does not read the whole database); 0
        /// searches every row of every table.
        live scan_sample_bytes: super::ByteSize,
    }
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            rules_file: None,
            rules: None,
            require_coverage: true,
            scan_sample_bytes: super::ByteSize(64 << 20),
        }
    }
}

impl MaskingConfig {
    /// Read and parse `rules_file` into `rules`.
    pub(super) fn read_rules(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.rules_file else {
            self.rules = None;
            return Ok(());
        };
        if !path.is_absolute() {
            return Err(super::invalid(
                "masking.rules_file",
                "must be an absolute path",
            ));
        }
        let read = || -> std::io::Result<String> {
            use std::io::Read;
            let mut text = String::new();
            std::fs::File::open(path)?
                .take(MAX_RULES_BYTES + 1)
                .read_to_string(&mut text)?;
            Ok(text)
        };
        let text = read().map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        if text.len() as u64 > MAX_RULES_BYTES {
            return Err(super::invalid(
                "masking.rules_file",
                format!("{} is larger than 4 MiB", path.display()),
            ));
        }
        crate::core::check_masking_rules(&text).map_err(|error| ConfigError::Rules {
            path: path.clone(),
            error: Box::new(error),
        })?;
        self.rules = Some(text.into());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn with_rules(text: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, text).expect("write");
        let config = Config::parse(&format!("[masking]\nrules_file = \"{}\"", path.display()));
        (dir, config)
    }

    #[test]
    fn the_rules_file_is_read_at_load() {
        let (_d, c) = with_rules("[app.users]\nemail = \"email\"\n");
        let c = c.expect("valid");
        assert!(c.masking.require_coverage, "fail closed by default");
        assert_eq!(
            c.masking.rules.as_deref(),
            Some("[app.users]\nemail = \"email\"\n")
        );
    }

    #[test]
    fn a_bad_rules_file_is_refused_with_its_line() {
        let (_d, c) = with_rules("[app.users]\nid = \"keep\"\nemail = \"emial\"\n");
        let e = c.expect_err("unknown transformer").to_string();
        assert!(
            e.contains("rules.toml") && e.contains("line 3") && e.contains("email"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        let (_d, c) = with_rules("[app.users\n");
        assert!(c.expect_err("syntax").to_string().contains("line 1"));
    }

    #[test]
    fn a_missing_or_relative_rules_file_is_refused() {
        let e = Config::parse("[masking]\nrules_file = \"/nonexistent/rules.toml\"")
            .expect_err("missing")
            .to_string();
        assert!(e.contains("/nonexistent/rules.toml"), "{e}");
        let e = Config::parse("[masking]\nrules_file = \"rules.toml\"")
            .expect_err("relative")
            .to_string();
        assert!(e.contains("masking.rules_file"), "{e}");
    }

    #[test]
    fn a_changed_rules_file_is_a_live_change() {
        use crate::config::Reloadable;
        let (_d, old) = with_rules("[app.users]\nemail = \"email\"\n");
        let (_e, new) = with_rules("[app.users]\nemail = \"hash\"\n");
        let mut r = crate::config::ReloadReport::default();
        old.expect("old").diff_into(&new.expect("new"), &mut r);
        assert!(r.applied.contains(&"masking.rules"), "{r:?}");
        assert!(r.needs_restart.is_empty(), "{r:?}");
    }
}
