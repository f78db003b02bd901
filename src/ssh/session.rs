//! The connection context every SSH channel runs with: who is asking and
//! from where ([`Session`]), and the per-user cap on open session channels
//! ([`Sessions`], whose [`SessionSlot`] is held for as long as a channel
//! runs). The server makes them; commands, the SCP sink and SFTP use them.

use crate::core::UserId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::core::{Actor, Caller, Service, SshSessionGauge};

/// Who runs the command, and from where.
#[derive(Clone)]
pub struct Session {
    pub service: Service,
    pub actor: Actor,
    /// The client's address (recorded for the instance allow-list).
    pub peer: Option<IpAddr>,
    /// The port the SSH server listens on. (Hints say `ssh draupnir …`,
    /// the Host alias the README sets up, so none prints it.)
    pub ssh_port: u16,
}

impl Session {
    /// The actor and the client's address, as the core takes them.
    pub fn caller(&self) -> Caller {
        Caller::new(self.actor.clone(), self.peer)
    }
}

/// Open session channels per user id, with the most one user may hold.
#[derive(Clone)]
pub(crate) struct Sessions {
    open: Arc<Mutex<HashMap<UserId, usize>>>,
    max_per_user: usize,
}

impl Sessions {
    pub(crate) fn new(max_per_user: usize) -> Self {
        Sessions {
            open: Arc::new(Mutex::new(HashMap::new())),
            max_per_user,
        }
    }

    /// A slot for one more channel of `user_id`, or `None` at the cap.
    pub(crate) fn take(&self, service: &Service, user_id: UserId) -> Option<SessionSlot> {
        let mut m = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(user_id).or_insert(0);
        if *n >= self.max_per_user {
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            open: self.open.clone(),
            user_id,
            _gauge: service.ssh_session(),
        })
    }
}

/// One open session channel counted against its user; released on drop.
pub(crate) struct SessionSlot {
    open: Arc<Mutex<HashMap<UserId, usize>>>,
    user_id: UserId,
    /// Counts the session in `/metrics` while it is held.
    _gauge: SshSessionGauge,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        // The counts stay right even if a task panicked holding the lock.
        let mut m = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.user_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.user_id);
            }
        }
    }
}
