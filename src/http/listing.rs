//! Rendered `GET /instances` bodies, kept per user while nothing stored
//! has changed.
//!
//! A listing is a pure function of the stored rows and `public_hostname`,
//! so a body rendered at the core's [`listing_version`] is exact for as
//! long as that version and the hostname stay the same: it is never stale,
//! and a body is only ever served to the user it was rendered for. Any
//! write (a create, a destroy, the cleaner, the warm pool) moves the
//! version and empties the cache.
//!
//! [`listing_version`]: crate::core::Service::listing_version

use crate::core::UserId;
use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;

/// At most this many users' bodies are kept between two writes.
const MAX_USERS: usize = 256;

#[derive(Default)]
pub(crate) struct Listings(Mutex<Cache>);

#[derive(Default)]
struct Cache {
    version: u64,
    hostname: String,
    bodies: HashMap<UserId, Bytes>,
}

impl Listings {
    /// `user`'s body rendered at `version` with `hostname`, if kept.
    pub fn get(&self, user: UserId, version: u64, hostname: &str) -> Option<Bytes> {
        let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.version != version || cache.hostname != hostname {
            return None;
        }
        cache.bodies.get(&user).cloned()
    }

    /// Keep `body`, rendered for `user` from rows read after `version`
    /// was taken.
    pub fn put(&self, user: UserId, version: u64, hostname: &str, body: Bytes) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.version != version || cache.hostname != hostname {
            cache.version = version;
            cache.hostname = hostname.to_owned();
            cache.bodies.clear();
        }
        if cache.bodies.len() >= MAX_USERS {
            cache.bodies.clear();
        }
        cache.bodies.insert(user, body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_served_only_to_its_user_at_its_version_and_hostname() {
        let l = Listings::default();
        assert_eq!(l.get(UserId::new(1), 7, "h"), None);
        l.put(UserId::new(1), 7, "h", Bytes::from_static(b"one"));
        assert_eq!(l.get(UserId::new(1), 7, "h").as_deref(), Some(&b"one"[..]));
        assert_eq!(l.get(UserId::new(2), 7, "h"), None);
        assert_eq!(l.get(UserId::new(1), 8, "h"), None);
        assert_eq!(l.get(UserId::new(1), 7, "other"), None);
        // A newer version drops every older body.
        l.put(UserId::new(2), 8, "h", Bytes::from_static(b"two"));
        assert_eq!(l.get(UserId::new(1), 8, "h"), None);
        assert_eq!(l.get(UserId::new(2), 8, "h").as_deref(), Some(&b"two"[..]));
    }
}
