//! Who is asking, and from where.
//!
//! An [`Actor`] is a user as the core knows it: its id, its name, whether
//! it is an admin, and which kind of [`Principal`] it is. Only the core
//! makes one (from a key, a token, an e-mail vouched for by OAuth, or one
//! of its own system users), so a front door cannot claim to be somebody.
//! A [`Caller`] adds the address the request came from, which the core
//! records for the instance allow-list itself. [`address_key`] says what
//! counts as one client address for the doors' per-address caps.

use std::net::{IpAddr, Ipv6Addr};

use super::error::{CoreError, Result};
use super::model::UserId;

/// What kind of user an actor is; the core matches on this, never on
/// names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// The Draupnir 5.x upload user (`shared_secret`): an admin that may
    /// also destroy an image together with its instances.
    Upload,
    /// The `environment = "test"` integration user.
    Integration,
    /// The warm pool's system user: owns waiting instances, never logs in.
    WarmPool,
    /// The daemon itself, for read-only views (metrics); no stored user.
    System,
    /// A person: an SSH key or API token holder, or an OAuth user.
    Person,
}

/// Who is asking. Made by the core only; front doors get one from an
/// authenticated identity and pass it back.
#[derive(Debug, Clone)]
pub struct Actor {
    user_id: UserId,
    name: String,
    admin: bool,
    principal: Principal,
}

impl Actor {
    pub(crate) fn new(user_id: UserId, name: String, admin: bool, principal: Principal) -> Self {
        Actor {
            user_id,
            name,
            admin,
            principal,
        }
    }

    pub fn id(&self) -> UserId {
        self.user_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_admin(&self) -> bool {
        self.admin
    }

    pub fn principal(&self) -> Principal {
        self.principal
    }

    pub(crate) fn require_admin(&self, what: &'static str) -> Result<()> {
        if self.admin {
            Ok(())
        } else {
            Err(CoreError::AdminOnly(what))
        }
    }
}

/// An actor and the address its request came from (none for work the
/// daemon does itself, or a client whose address is unknown).
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    pub from: Option<IpAddr>,
}

impl Caller {
    pub fn new(actor: Actor, from: Option<IpAddr>) -> Self {
        Caller { actor, from }
    }
}

impl From<Actor> for Caller {
    fn from(actor: Actor) -> Self {
        Caller { actor, from: None }
    }
}

impl From<&Actor> for Caller {
    fn from(actor: &Actor) -> Self {
        Caller {
            actor: actor.clone(),
            from: None,
        }
    }
}

/// What both front doors' per-address caps count `ip` as, one client:
/// IPv4 (also IPv4-mapped IPv6) as itself, other IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_is_an_ipv4_address_or_an_ipv6_64() {
        let k = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(k("10.0.0.1"), k("::ffff:10.0.0.1"));
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
    }
}
