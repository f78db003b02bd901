//! Users and SSH keys: who someone is and what they may do. (API tokens
//! are in `tokens.rs`.)

use crate::core::model::Fingerprint;
use base64::Engine;

use super::error::{BadInput, Conflict, Missing};
use super::{Actor, CoreError, Principal, Result, Service};
use crate::core::store::{SshKey, User};

/// An OpenSSH public key line, checked for shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub algorithm: String,
    pub blob: Vec<u8>,
    pub comment: Option<String>,
}

const ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

impl PublicKey {
    /// Parse `algorithm base64 [comment]` (one line of authorized_keys,
    /// without options).
    pub fn parse(line: &str) -> Result<PublicKey> {
        let line = line.trim();
        let mut parts = line.splitn(3, char::is_whitespace);
        let algorithm = parts.next().unwrap_or("");
        if !ALGORITHMS.contains(&algorithm) {
            return Err(BadInput::KeyType(algorithm.chars().take(40).collect()).into());
        }
        let b64 = parts.next().unwrap_or("");
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| BadInput::KeyBase64)?;
        // The blob starts with the algorithm name as an SSH string.
        let name_len = blob
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .unwrap_or(usize::MAX);
        if blob.get(4..4usize.saturating_add(name_len)) != Some(algorithm.as_bytes()) {
            return Err(BadInput::KeyMismatch.into());
        }
        let comment = parts
            .next()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        Ok(PublicKey {
            algorithm: algorithm.into(),
            blob,
            comment,
        })
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.blob)
    }

    /// The key without its comment.
    pub fn to_line(&self) -> String {
        format!(
            "{} {}",
            self.algorithm,
            base64::engine::general_purpose::STANDARD.encode(&self.blob)
        )
    }
}

fn valid_name(name: &str) -> Result<()> {
    if name == super::POOL_USER {
        return Err(BadInput::ReservedName(name.to_string()).into());
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(BadInput::UserName(name.chars().take(64).collect()).into())
    }
}

impl Service {
    /// The actor a stored user is, and which kind of principal: the
    /// reserved names are the core's own users; everyone else is a person.
    pub(crate) fn actor_of(&self, user: &User) -> Actor {
        let principal = if user.name == super::UPLOAD_USER && user.is_admin {
            Principal::Upload
        } else if user.name == super::POOL_USER {
            Principal::WarmPool
        } else if self.is_integration_user(user) {
            Principal::Integration
        } else {
            Principal::Person
        };
        Actor::new(user.id, user.name.clone(), user.is_admin, principal)
    }

    /// Create admin users for the configured `[ssh] admin_keys` and
    /// `authorized_keys_file` at start (keys already known are skipped).
    pub(crate) fn bootstrap_admins(&self) -> std::result::Result<(), super::StartError> {
        let config = self.config();
        let cfg = &config.ssh;
        let mut lines: Vec<String> = cfg.admin_keys.clone();
        if let Some(path) = &cfg.authorized_keys_file {
            let text = std::fs::read_to_string(path).map_err(|source| super::StartError::Io {
                what: "cannot read [ssh] authorized_keys_file",
                path: path.clone(),
                source,
            })?;
            lines.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        for line in lines {
            let key = match PublicKey::parse(&line) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a bootstrap admin key");
                    continue;
                }
            };
            if self
                .inner
                .store
                .key_by_fingerprint(&key.fingerprint())
                .ok()
                .flatten()
                .is_some()
            {
                continue;
            }
            let name = key
                .comment
                .as_deref()
                .and_then(|c| c.split('@').next())
                .filter(|n| valid_name(n).is_ok())
                .unwrap_or("admin")
                .to_string();
            let user = match self.inner.store.user_by_name(&name).ok().flatten() {
                Some(u) => {
                    if !u.is_admin {
                        let _ = self.inner.store.set_user_admin(u.id, true);
                    }
                    u
                }
                None => match self.inner.store.insert_user(&name, None, true) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot create bootstrap admin");
                        continue;
                    }
                },
            };
            if let Err(e) = self
                .inner
                .store
                .insert_key(user.id, &key.fingerprint(), &key.to_line())
            {
                tracing::warn!(error = %e, "cannot add bootstrap admin key");
            } else {
                tracing::info!(user = %name, fingerprint = %key.fingerprint(), "admin key from config");
            }
        }
        Ok(())
    }

    /// Who owns this SSH key (by fingerprint)?
    pub fn authenticate_key(&self, fingerprint: &Fingerprint) -> Result<Option<Actor>> {
        let Some(key) = self.inner.store.key_by_fingerprint(fingerprint)? else {
            return Ok(None);
        };
        Ok(self
            .inner
            .store
            .user_by_id(key.user_id)?
            .map(|u| self.actor_of(&u)))
    }

    /// The actor for a user by name (front doors with their own identity
    /// sources, tests).
    pub fn actor_for(&self, name: &str) -> Result<Option<Actor>> {
        Ok(self
            .inner
            .store
            .user_by_name(name)?
            .map(|u| self.actor_of(&u)))
    }

    /// Find or create the user behind an e-mail address.
    pub fn actor_for_email(&self, email: &str, admin: bool) -> Result<Actor> {
        if let Some(u) = self.inner.store.user_by_email(email)? {
            return Ok(self.actor_of(&u));
        }
        let name = email.to_string();
        valid_name(&name)?;
        let u = match self.inner.store.user_by_name(&name)? {
            Some(u) => u,
            None => self.inner.store.insert_user(&name, Some(email), admin)?,
        };
        Ok(self.actor_of(&u))
    }

    fn user_or_404(&self, name: &str) -> Result<User> {
        self.inner
            .store
            .user_by_name(name)?
            .ok_or_else(|| CoreError::NotFound(Missing::User(name.into())))
    }

    pub fn whoami(&self, actor: &Actor) -> Result<User> {
        self.inner
            .store
            .user_by_id(actor.id())?
            .ok_or_else(|| CoreError::NotFound(Missing::User(actor.name().to_string())))
    }

    pub fn list_users(&self, actor: &Actor) -> Result<Vec<User>> {
        actor.require_admin("listing users")?;
        Ok(self.inner.store.users()?)
    }

    pub fn add_user(
        &self,
        actor: &Actor,
        name: &str,
        email: Option<&str>,
        admin: bool,
    ) -> Result<User> {
        actor.require_admin("adding users")?;
        valid_name(name)?;
        if self.inner.store.user_by_name(name)?.is_some() {
            return Err(Conflict::UserExists(name.to_string()).into());
        }
        if let Some(e) = email {
            if !e.contains('@') || e.len() > 254 {
                return Err(BadInput::Email(e.to_string()).into());
            }
            if self.inner.store.user_by_email(e)?.is_some() {
                return Err(Conflict::EmailTaken(e.to_string()).into());
            }
        }
        let u = self.inner.store.insert_user(name, email, admin)?;
        tracing::info!(user = %name, by = %actor.name(), admin, "user added");
        Ok(u)
    }

    /// Remove a user, destroying their instances first.
    pub async fn remove_user(&self, actor: &Actor, name: &str) -> Result<()> {
        actor.require_admin("removing users")?;
        let user = self.user_or_404(name)?;
        if user.id == actor.id() {
            return Err(BadInput::RemoveSelf.into());
        }
        for inst in self.inner.store.instances(Some(user.id), None)? {
            // A warm instance handed over meanwhile is someone else's now.
            if inst.pooled && !self.inner.store.retire_pooled_instance(inst.id)? {
                continue;
            }
            self.destroy_instance_unchecked(inst.id).await?;
        }
        self.inner.store.delete_user(user.id)?;
        tracing::info!(user = %name, by = %actor.name(), "user removed");
        Ok(())
    }

    /// Add a key to a user: admins for anyone, users for themselves.
    pub fn add_key(&self, actor: &Actor, user: &str, key_line: &str) -> Result<Fingerprint> {
        let target = self.user_or_404(user)?;
        if target.id != actor.id() {
            actor.require_admin("adding keys for other users")?;
        }
        if target.name == super::POOL_USER {
            return Err(BadInput::PoolUser(user.to_string()).into());
        }
        let key = PublicKey::parse(key_line)?;
        let fp = key.fingerprint();
        if let Some(existing) = self.inner.store.key_by_fingerprint(&fp)? {
            return Err(Conflict::KeyTaken {
                fingerprint: fp,
                owner: existing.user_name,
            }
            .into());
        }
        self.inner
            .store
            .insert_key(target.id, &fp, &key.to_line())?;
        tracing::info!(user = %user, fingerprint = %fp, by = %actor.name(), "key added");
        Ok(fp)
    }

    pub fn remove_key(&self, actor: &Actor, fingerprint: &str) -> Result<()> {
        let fingerprint = &Fingerprint::from_stored(fingerprint.to_string());
        let key = self
            .inner
            .store
            .key_by_fingerprint(fingerprint)?
            .ok_or_else(|| Missing::Key(fingerprint.clone()))?;
        if key.user_id != actor.id() {
            actor.require_admin("removing other users' keys")?;
        }
        self.inner.store.delete_key(fingerprint)?;
        tracing::info!(%fingerprint, by = %actor.name(), "key removed");
        Ok(())
    }

    /// Keys of one user (admins: anyone's; users: their own) or all (admins).
    pub fn list_keys(&self, actor: &Actor, user: Option<&str>) -> Result<Vec<SshKey>> {
        match user {
            Some(name) => {
                let u = self.user_or_404(name)?;
                if u.id != actor.id() {
                    actor.require_admin("listing other users' keys")?;
                }
                Ok(self.inner.store.keys(Some(u.id))?)
            }
            None if actor.is_admin() => Ok(self.inner.store.keys(None)?),
            None => Ok(self.inner.store.keys(Some(actor.id()))?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";

    #[test]
    fn parses_keys_and_fingerprints() {
        let k = PublicKey::parse(KEY).unwrap();
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert_eq!(k.comment.as_deref(), Some("alice@laptop"));
        assert!(k.fingerprint().as_str().starts_with("SHA256:"));
        assert!(PublicKey::parse("ssh-ed25519 notbase64!").is_err());
        assert!(PublicKey::parse(
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        )
        .is_err());
        assert!(PublicKey::parse("hello world").is_err());
    }
}
