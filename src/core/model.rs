//! The core's vocabulary: what both front doors talk about.
//!
//! Owns the ids ([`ImageId`], [`InstanceId`], [`UserId`]: distinct types,
//! so one cannot be passed for another), an SSH key's [`Fingerprint`]
//! (made by one function), the image and instance states, the records the
//! core hands out ([`Image`], [`Instance`], [`User`], [`SshKey`],
//! [`Credentials`]) and a finalise's [`Progress`]. The store reads and
//! writes these; the front doors format them.

use std::fmt;

use super::manifest::{AnonymisationStatus, Manifest};

use time::OffsetDateTime;

use crate::secret::Secret;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// The id with this number (as stored, or as a client gave it).
            pub const fn new(raw: i64) -> Self {
                $name(raw)
            }

            /// The number, for the wire and the database.
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                i64::column_result(v).map($name)
            }
        }
    };
}

id_type!(
    /// An image's id.
    ImageId
);
id_type!(
    /// An instance's id.
    InstanceId
);
id_type!(
    /// A user's id.
    UserId
);
id_type!(
    /// An API token's id (its secret is never kept, only a hash).
    TokenId
);

/// An SSH public key's fingerprint, `SHA256:` and unpadded base64 of the
/// SHA-256 of the key's wire encoding, as OpenSSH prints it. Made only by
/// [`Fingerprint::of`] (or read back from the store), so the SSH server
/// and the key registry cannot disagree on the form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of a key, given its wire encoding (the bytes the
    /// base64 in an `authorized_keys` line decodes to).
    pub fn of(key_blob: &[u8]) -> Fingerprint {
        use base64::Engine as _;
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(key_blob);
        Fingerprint(format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        ))
    }

    /// A fingerprint as stored or as an admin typed it (`remove-key`).
    pub fn from_stored(s: String) -> Fingerprint {
        Fingerprint(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl rusqlite::ToSql for Fingerprint {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for Fingerprint {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        String::column_result(v).map(Fingerprint)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Image lifecycle states. `destroying` is stored as a flag beside the
/// state it interrupted (so a restart can finish the destroy); it wins
/// over every other state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    Uploading,
    Finalising,
    Ready,
    Failed,
    Destroying,
}

impl ImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Uploading => "uploading",
            ImageState::Finalising => "finalising",
            ImageState::Ready => "ready",
            ImageState::Failed => "failed",
            ImageState::Destroying => "destroying",
        }
    }

    /// The state stored as `s` (an unknown word reads as failed).
    pub(crate) fn parse(s: &str) -> ImageState {
        match s {
            "uploading" => ImageState::Uploading,
            "finalising" => ImageState::Finalising,
            "ready" => ImageState::Ready,
            _ => ImageState::Failed,
        }
    }
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Instance lifecycle states. `destroying` records the intent to destroy,
/// so a restart can finish the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Creating,
    Running,
    Failed,
    Destroying,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Creating => "creating",
            InstanceState::Running => "running",
            InstanceState::Failed => "failed",
            InstanceState::Destroying => "destroying",
        }
    }

    /// The state stored as `s` (an unknown word reads as failed).
    pub(crate) fn parse(s: &str) -> InstanceState {
        match s {
            "creating" => InstanceState::Creating,
            "running" => InstanceState::Running,
            "destroying" => InstanceState::Destroying,
            _ => InstanceState::Failed,
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Image {
    pub id: ImageId,
    pub state: ImageState,
    pub failure_reason: Option<String>,
    pub backed_up_at: Option<OffsetDateTime>,
    pub anonymisation_script: Option<String>,
    pub pg_major: Option<u32>,
    pub size_bytes: u64,
    /// An upload is streaming into the image right now.
    pub upload_active: bool,
    pub created_by: Option<UserId>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The database its script ran in and clients connect to (sealed
    /// images; `None`: `[postgres] database`).
    pub database: Option<String>,
    /// Its own masking rules (TOML), if given at creation.
    pub masking_rules: Option<String>,
    /// Declared not personal at creation (`--no-anonymisation`).
    pub no_anonymisation: bool,
    /// How it was anonymised (ready images; older ones read as
    /// [`Manifest::legacy`]).
    pub anonymisation: Option<Box<Manifest>>,
}

impl Image {
    /// The anonymisation status shown for it: a ready image's manifest's,
    /// `None` before it is sealed.
    pub fn anonymisation_status(&self) -> Option<AnonymisationStatus> {
        self.manifest().map(|m| m.status)
    }

    /// Its anonymisation as listings show it: `checked`, `unchecked` or
    /// `none` once sealed; before, what it was declared with (`(none)`,
    /// `(rules)` of its own) or `-`.
    pub fn anonymisation_label(&self) -> &'static str {
        match self.anonymisation_status() {
            Some(s) => s.as_str(),
            None if self.no_anonymisation => "(none)",
            None if self.masking_rules.is_some() => "(rules)",
            None => "-",
        }
    }

    /// Its manifest: the recorded one, [`Manifest::legacy`] for a ready
    /// image sealed before manifests, `None` before it is sealed.
    pub fn manifest(&self) -> Option<Manifest> {
        match (&self.anonymisation, self.state) {
            (Some(m), _) => Some(m.as_ref().clone()),
            (None, ImageState::Ready) => Some(Manifest::legacy()),
            (None, _) => None,
        }
    }
}

impl Image {
    /// An upload ended and left data in the image, and no stream is
    /// arriving now: it can be finalised (it still takes more uploads).
    pub fn upload_finished(&self) -> bool {
        self.state == ImageState::Uploading && !self.upload_active && self.size_bytes > 0
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: InstanceId,
    pub image_id: ImageId,
    pub owner_id: UserId,
    pub owner_name: String,
    pub state: InstanceState,
    pub failure_reason: Option<String>,
    pub port: u16,
    pub pid: Option<i32>,
    /// When the cleaner destroys it (None: never).
    pub expires_at: Option<OffsetDateTime>,
    /// Last time the cleaner saw a client connected.
    pub last_active_at: Option<OffsetDateTime>,
    /// Waiting in the warm pool (owned by the pool's system user).
    pub pooled: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// PEM material a client needs to reach an instance. The key is a
/// [`Secret`]: it never shows in a `Debug` print or a log.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca_certificate: String,
    pub client_certificate: String,
    pub client_key: Secret<String>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub email: Option<String>,
    pub is_admin: bool,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct SshKey {
    pub id: i64,
    pub user_id: UserId,
    pub user_name: String,
    pub fingerprint: Fingerprint,
    pub public_key: String,
    pub created_at: OffsetDateTime,
}

/// An API token as listed: who holds it and when it was made and last
/// used; never the secret.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub id: TokenId,
    pub user_id: UserId,
    pub user_name: String,
    pub created_at: OffsetDateTime,
    /// When it last authenticated a request (kept to the minute).
    pub last_used_at: Option<OffsetDateTime>,
}

/// What a finalise reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A step begins.
    Step(String),
    /// A line the anonymisation script printed.
    Output(String),
    /// The image is sealed and ready.
    Done,
}

/// A timestamp as the store and both front doors write it: RFC 3339 in
/// UTC with a `Z`.
pub fn format_ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}
