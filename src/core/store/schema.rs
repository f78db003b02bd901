//! Versioned schema migrations. Append only: a released migration is never
//! edited; the index in this list (plus one) is its version.

pub const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
CREATE TABLE users (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    email       TEXT UNIQUE COLLATE NOCASE,
    is_admin    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL
);
CREATE TABLE ssh_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL UNIQUE,
    public_key  TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);
CREATE TABLE images (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    state                TEXT NOT NULL CHECK (state IN ('uploading', 'finalising', 'ready', 'failed')),
    failure_reason       TEXT,
    backed_up_at         TEXT,
    anonymisation_script TEXT,
    pg_major             INTEGER,
    size_bytes           INTEGER NOT NULL DEFAULT 0,
    upload_active        INTEGER NOT NULL DEFAULT 0,
    created_by           INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);
CREATE TABLE instances (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id           INTEGER NOT NULL REFERENCES images(id),
    owner_id           INTEGER NOT NULL REFERENCES users(id),
    state              TEXT NOT NULL CHECK (state IN ('creating', 'running', 'failed', 'destroying')),
    failure_reason     TEXT,
    port               INTEGER NOT NULL UNIQUE,
    pid                INTEGER,
    ca_certificate     TEXT,
    client_certificate TEXT,
    client_key         TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);
CREATE INDEX instances_owner ON instances(owner_id);
CREATE INDEX instances_image ON instances(image_id);
CREATE TABLE whitelisted_addresses (
    instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    address     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (instance_id, address)
);
"#,
    // 2: instance lifetimes and idleness.
    r#"
ALTER TABLE instances ADD COLUMN expires_at TEXT;
ALTER TABLE instances ADD COLUMN last_active_at TEXT;
"#,
    // 3: the OAuth refresh token an instance was created with (the cleaner
    // destroys the instance when the provider revokes it).
    r#"
ALTER TABLE instances ADD COLUMN oauth_refresh_token TEXT;
"#,
    // 4: the warm pool. A pooled instance is running, owned by the pool's
    // system user and waiting to be handed over; a handover clears the flag
    // and nothing ever sets it on an existing row.
    r#"
ALTER TABLE instances ADD COLUMN pooled INTEGER NOT NULL DEFAULT 0;
CREATE INDEX instances_pool ON instances(image_id, pooled, state);
"#,
    // 5: an image being destroyed. Set (under the image's exclusive lock)
    // before anything of it is deleted and never cleared: the image is
    // then `destroying` whatever its state was, no instance is made from
    // it, and a restart finishes the destroy.
    r#"
ALTER TABLE images ADD COLUMN destroying INTEGER NOT NULL DEFAULT 0;
"#,
    // 6: the database a sealed image's script ran in and its clients are
    // pointed at (NULL: `[postgres] database`, as before).
    r#"
ALTER TABLE images ADD COLUMN database TEXT;
"#,
    // 7: masking. An image's own rules (TOML text), whether it was
    // declared not personal, and the manifest finalise records (JSON; NULL
    // for images sealed before, which read as `unchecked`).
    r#"
ALTER TABLE images ADD COLUMN masking_rules TEXT;
ALTER TABLE images ADD COLUMN no_anonymisation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN anonymisation TEXT;
"#,
    // 8: when each API token last authenticated a request (updated at
    // most once a minute per token), for `tokens`.
    r#"
ALTER TABLE api_tokens ADD COLUMN last_used_at TEXT;
"#,
];
