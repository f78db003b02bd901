//! `Secret<T>`: a value that must never reach a log. Its `Debug` prints
//! `[redacted]`, it has no `Display`, and the value is read only through
//! an explicit [`Secret::expose`]. It deserialises as the bare value, so a
//! secret in the TOML file is written exactly as before, and serialises as
//! the bare value, for the one wire document that hands a token to its
//! owner (nothing that is logged derives `Serialize` over a secret).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret: shared secrets, OAuth client secrets, refresh tokens, private
/// keys.
#[derive(Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wrap a secret value.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value itself, for the one place that must use it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwrap the value (to hand it on where it is sent or stored).
    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2-secret".to_string());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2-secret");
    }

    #[test]
    fn deserialises_as_the_bare_value() {
        #[derive(Deserialize)]
        struct T {
            s: Secret<String>,
            o: Option<Secret<String>>,
        }
        let t: T = toml::from_str("s = \"abc\"\no = \"def\"").unwrap();
        assert_eq!(t.s.expose(), "abc");
        assert_eq!(t.o.as_ref().map(|s| s.expose().as_str()), Some("def"));
    }
}
