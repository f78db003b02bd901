//! Who is asking, and from where.
//!
//! An [`Actor`] is a user as the core knows it: its id, its name, whether
//! it is an admin, and which kind of [`Principal`] it is. Only the core
//! makes one (from a key, a token, an e-mail vouched for by OAuth, or one
//! of its own system users), so a front door cannot claim to be somebody.
//! A [`Caller`] adds the address the request came from, which the core
//! records for the instance allow-list itself.

use std::net::IpAddr;

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
