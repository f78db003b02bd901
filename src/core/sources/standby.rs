//! One source's standby on disk and as a process: its subvolume (the data
//! directory, copied once from the primary by `pg_basebackup`, streamed,
//! no temporary copy), its private copy of the password file, the
//! configuration it runs with (a hot standby with no TCP listener, its
//! socket in its own data directory), the box its postmaster runs in, and
//! reading its replay position over that socket.
//!
//! The standby runs as its own system user, not the instance user: its
//! files are production data, unreadable to every instance's postmaster
//! even outside its box.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Confinement, SourceConfig, SourceName};
use crate::core::postgres::cluster::{self, InstanceUser, PgBin};
use crate::core::postgres::pgconn;
use crate::core::postgres::process::{self, PostmasterSpec};
use crate::core::postgres::sandbox::Reach;
use crate::core::storage::btrfs;

use super::lsn::Lsn;
use super::primary::{Primary, PrimaryError};

/// The socket's port number (no TCP listener; it only names the socket).
pub const SOCKET_PORT: u16 = 5432;

/// Why a standby could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error("{0}")]
    Primary(#[from] PrimaryError),
    /// The primary's major is not installed here.
    #[error("the primary runs PostgreSQL {major}, which is not installed here (installed: {installed}); install it (apt-get install postgresql-{major}) and restart draupnir")]
    Major { major: u32, installed: String },
    #[error("{0}")]
    Cluster(#[from] cluster::ClusterError),
    #[error("{0}")]
    Btrfs(#[from] btrfs::BtrfsError),
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pg_basebackup failed: {0}")]
    Basebackup(String),
    #[error("pg_controldata failed: {0}")]
    Controldata(String),
    #[error("{0}")]
    Sandbox(#[from] crate::core::postgres::sandbox::SandboxError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StandbyError {
    let path = path.to_owned();
    move |source| StandbyError::Io { what, path, source }
}

/// Where one source's standby lives, and what it runs with.
#[derive(Debug, Clone)]
pub struct Standby {
    pub name: SourceName,
    pub config: SourceConfig,
    /// The subvolume: the standby's data directory.
    pub datadir: PathBuf,
    /// The standby's copy of the password file (0600, its user's).
    pub passfile: PathBuf,
    pub log_file: PathBuf,
    pub user: InstanceUser,
    pub bin_root: PathBuf,
    pub confinement: Confinement,
}

impl Standby {
    /// Has the first copy finished? (`standby.signal` is written last.)
    pub fn is_made(&self) -> bool {
        self.datadir.join("standby.signal").is_file()
            && self.datadir.join("global/pg_control").is_file()
    }

    fn passfile_if_any(&self) -> Option<&Path> {
        self.config
            .passfile
            .as_ref()
            .map(|_| self.passfile.as_path())
    }

    /// How to reach the primary (psql of the newest installed major).
    pub fn primary(&self) -> Result<Primary<'_>, StandbyError> {
        let newest = cluster::installed_majors(&self.bin_root)
            .last()
            .copied()
            .unwrap_or(0);
        let bin = cluster::find_bin(&self.bin_root, newest)?;
        Ok(Primary {
            conninfo: &self.config.primary_conninfo,
            passfile: self.passfile_if_any(),
            psql: bin.psql(),
        })
    }

    /// What its box reaches besides its data directory: the password file
    /// and the primary's ports.
    fn reach(&self) -> Reach {
        Reach {
            read_files: self
                .passfile_if_any()
                .map(Path::to_owned)
                .into_iter()
                .collect(),
            connect_ports: self.config.primary_conninfo.ports().unwrap_or_default(),
        }
    }

    /// Copy the configured password file for the standby's user (libpq
    /// ignores one others may read).
    pub fn copy_passfile(&self) -> Result<(), StandbyError> {
        let Some(src) = &self.config.passfile else {
            let _ = std::fs::remove_file(&self.passfile);
            return Ok(());
        };
        let text = std::fs::read(src).map_err(io("cannot read passfile", src))?;
        // Written aside and renamed over the old copy: a connection attempt
        // meanwhile reads the old one or the new one, never none. Its own
        // temporary name: a reload may copy while the keeper does.
        let tmp = self
            .passfile
            .with_extension(format!("tmp{:08x}", rand::random::<u32>()));
        let _ = std::fs::remove_file(&tmp);
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("cannot write", &tmp))?;
            f.write_all(&text).map_err(io("cannot write", &tmp))?;
        }
        std::os::unix::fs::chown(&tmp, Some(self.user.uid), Some(self.user.gid))
            .map_err(io("cannot chown", &tmp))?;
        std::fs::rename(&tmp, &self.passfile).map_err(io("cannot write", &self.passfile))?;
        Ok(())
    }

    /// The first copy: check the primary, create the slot if asked,
    /// `pg_basebackup` straight into a fresh subvolume, then the
    /// standby's own configuration. A failure leaves no subvolume.
    pub async fn make(&self, say: &(dyn Fn(String) + Send + Sync)) -> Result<(), StandbyError> {
        self.copy_passfile()?;
        let primary = self.primary()?;
        let who = primary.identify().await?;
        let bin = cluster::find_bin(&self.bin_root, who.major).map_err(|_| {
            let installed = cluster::installed_majors(&self.bin_root)
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            StandbyError::Major {
                major: who.major,
                installed: if installed.is_empty() {
                    "none".into()
                } else {
                    installed
                },
            }
        })?;
        if let Some(slot) = &self.config.slot {
            if primary.ensure_slot(slot).await? {
                say(format!(
                    "created replication slot {} on the primary",
                    slot.as_str()
                ));
            }
        }
        if btrfs::is_subvolume(&self.datadir) {
            btrfs::delete_subvolume(&self.datadir)?;
        }
        btrfs::create_subvolume(&self.datadir)?;
        let made = self
            .basebackup(&bin)
            .await
            .and_then(|()| self.configure(&bin));
        if let Err(e) = made {
            let _ = btrfs::delete_subvolume(&self.datadir);
            return Err(e);
        }
        Ok(())
    }

    async fn basebackup(&self, bin: &PgBin) -> Result<(), StandbyError> {
        std::fs::set_permissions(&self.datadir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("cannot chmod", &self.datadir))?;
        std::os::unix::fs::chown(&self.datadir, Some(self.user.uid), Some(self.user.gid))
            .map_err(io("cannot chown", &self.datadir))?;
        let conninfo = self.config.primary_conninfo.render(&[
            (
                "application_name",
                &format!("draupnir_{}", self.name.as_str().replace('-', "_")),
            ),
            ("connect_timeout", "10"),
        ]);
        let mut cmd = tokio::process::Command::new(bin.dir.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&self.datadir)
            .args(["-X", "stream", "-c", "fast", "--no-password", "-d"])
            .arg(conninfo)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env(
                "PGPASSFILE",
                self.passfile_if_any().unwrap_or(Path::new("/dev/null")),
            )
            .current_dir(&self.datadir)
            .uid(self.user.uid)
            .gid(self.user.gid)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(slot) = &self.config.slot {
            cmd.args(["-S", slot.as_str()]);
        }
        process::confine(
            &mut cmd,
            self.confinement,
            bin,
            &self.datadir,
            None,
            &self.reach(),
        )?;
        let out = cmd
            .output()
            .await
            .map_err(|e| StandbyError::Basebackup(e.to_string()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .map(|l| l.trim().trim_start_matches("pg_basebackup:").trim())
                .find(|l| !l.is_empty())
                .unwrap_or("no message")
                .to_owned();
            return Err(StandbyError::Basebackup(line));
        }
        Ok(())
    }

    /// Write the standby's own configuration over what the copy brought
    /// (the primary's `postgresql.conf`, `postgresql.auto.conf`, client
    /// rules, certificates), then `standby.signal`, last.
    fn configure(&self, bin: &PgBin) -> Result<(), StandbyError> {
        cluster::neutralise(&self.datadir, &self.user)?;
        self.write_conf(bin)?;
        cluster::write_owned(&self.datadir, "standby.signal", b"", &self.user)?;
        Ok(())
    }

    /// Who may connect: only root (the daemon), by peer authentication,
    /// through the socket in this 0700 directory, as the replication role
    /// or the bootstrap superuser (`superuser`, once known; `postgres`
    /// until then).
    fn write_access(&self, superuser: Option<&str>) -> Result<(), StandbyError> {
        cluster::write_owned(
            &self.datadir,
            "pg_hba.conf",
            b"# Written by Draupnir: only the daemon (root), through the private socket.\nlocal all all peer map=draupnir\n",
            &self.user,
        )?;
        let mut ident = String::from("# Written by Draupnir.\n");
        for role in [
            self.config.primary_conninfo.user(),
            superuser.unwrap_or("postgres"),
        ] {
            // A name pg_ident.conf cannot hold is left out (the daemon then
            // cannot read that standby's position, and says so).
            if !role.is_empty() && !role.contains(['"', '\n', '\r']) {
                ident.push_str(&format!("draupnir root \"{role}\"\n"));
            }
        }
        cluster::write_owned(&self.datadir, "pg_ident.conf", ident.as_bytes(), &self.user)?;
        Ok(())
    }

    /// The standby's `postgresql.conf`: its primary, its slot, no
    /// listener, and each setting a hot standby must hold at least at the
    /// primary's value (read from its `pg_control`).
    fn conf_text(&self, bin: &PgBin) -> Result<String, StandbyError> {
        let at_least = primary_minimums(bin, &self.datadir)?;
        let primary = self.config.primary_conninfo.render(&[
            (
                "application_name",
                &format!("draupnir_{}", self.name.as_str().replace('-', "_")),
            ),
            ("passfile", &self.passfile.display().to_string()),
        ]);
        let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
        let mut conf = String::from(
            "# Written by Draupnir for the standby of a source; do not edit.\n\
             hot_standby = on\n\
             listen_addresses = ''\n\
             ssl = off\n\
             hot_standby_feedback = off\n\
             wal_receiver_status_interval = 1s\n\
             wal_retrieve_retry_interval = 5s\n\
             archive_mode = off\n\
             max_logical_replication_workers = 0\n",
        );
        conf.push_str(&format!("primary_conninfo = {}\n", quote(&primary)));
        if let Some(slot) = &self.config.slot {
            conf.push_str(&format!("primary_slot_name = {}\n", quote(slot.as_str())));
        }
        for (name, value) in at_least {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        Ok(conf)
    }

    /// Rewrite the configuration (a changed source: new conninfo, slot,
    /// password file); applies at the standby's next start.
    pub fn reconfigure(&self) -> Result<(), StandbyError> {
        let major = cluster::read_major(&self.datadir)?;
        let bin = cluster::find_bin(&self.bin_root, major)?;
        self.copy_passfile()?;
        self.write_conf(&bin)
    }

    fn write_conf(&self, bin: &PgBin) -> Result<(), StandbyError> {
        self.write_access(None)?;
        let conf = self.conf_text(bin)?;
        cluster::write_owned(
            &self.datadir,
            "postgresql.conf",
            conf.as_bytes(),
            &self.user,
        )?;
        Ok(())
    }

    /// How its postmaster runs: as the standby user, boxed to its data
    /// directory, reaching its password file and its primary's ports.
    pub fn spec(&self) -> Result<PostmasterSpec, StandbyError> {
        let major = cluster::read_major(&self.datadir)?;
        let bin = cluster::find_bin(&self.bin_root, major)?;
        Ok(PostmasterSpec {
            bin,
            datadir: self.datadir.clone(),
            port: SOCKET_PORT,
            tcp: false,
            settings: vec![(
                "unix_socket_directories".into(),
                self.datadir.display().to_string(),
            )],
            log_file: self.log_file.clone(),
            user: self.user.clone(),
            confinement: self.confinement,
            reach: self.reach(),
        })
    }

    /// A session as the standby's bootstrap superuser over its private
    /// socket (its name is read once, as the replication role).
    async fn session(
        &self,
        superuser: &mut Option<String>,
    ) -> Result<tokio_postgres::Client, String> {
        // The superuser's sessions load no library a role setting names;
        // the replication role may not set those, and needs no guard.
        let connect = |role: String, options: &'static str| async move {
            pgconn::connect_unix_with(
                &self.datadir,
                SOCKET_PORT,
                &role,
                None,
                options,
                "template1",
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| e.to_string())
        };
        if superuser.is_none() {
            let c = connect(
                self.config.primary_conninfo.user().to_owned(),
                "-c search_path=pg_catalog",
            )
            .await?;
            let row = c
                .query_one(
                    "SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = 10",
                    &[],
                )
                .await
                .map_err(|e| pgconn::error_message(&e))?;
            let name: String = row.get(0);
            if name != "postgres" {
                // Map root to it too, and have the running standby read
                // its files again.
                self.write_access(Some(&name)).map_err(|e| e.to_string())?;
                if let Some(pid) = process::running_postmaster(&self.datadir) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGHUP,
                    );
                }
            }
            *superuser = Some(name);
        }
        let su = superuser.clone().unwrap_or_default();
        let mut tries = 0;
        loop {
            let options =
                "-c search_path=pg_catalog -c session_preload_libraries= -c local_preload_libraries=";
            match connect(su.clone(), options).await {
                // A reload just asked for may not have been read yet.
                Err(e) if tries < 20 => {
                    tries += 1;
                    tracing::debug!(error = %e, "standby session, retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// A restartpoint now (at the last checkpoint the primary sent), so a
    /// snapshot's first start has less WAL to replay.
    pub async fn checkpoint(&self, superuser: &mut Option<String>) -> Result<(), String> {
        let c = self.session(superuser).await?;
        c.batch_execute("CHECKPOINT")
            .await
            .map_err(|e| pgconn::error_message(&e))
    }

    /// Read where the standby is, over its private socket.
    pub async fn position(&self, superuser: &mut Option<String>) -> Result<Position, String> {
        let c = self.session(superuser).await?;
        let row = c
            .query_one(
                "SELECT pg_catalog.pg_is_in_recovery(),
                        pg_catalog.pg_last_wal_replay_lsn()::text,
                        pg_catalog.pg_last_wal_receive_lsn()::text,
                        extract(epoch FROM pg_catalog.pg_last_xact_replay_timestamp())::float8,
                        (SELECT status FROM pg_catalog.pg_stat_wal_receiver),
                        (SELECT latest_end_lsn::text FROM pg_catalog.pg_stat_wal_receiver),
                        extract(epoch FROM now())::float8",
                &[],
            )
            .await
            .map_err(|e| pgconn::error_message(&e))?;
        let lsn = |i: usize| -> Option<Lsn> { row.get::<_, Option<String>>(i)?.parse().ok() };
        Ok(Position {
            in_recovery: row.get(0),
            replay: lsn(1),
            received: lsn(2),
            replay_time: row.get(3),
            receiver: row.get(4),
            primary_end: lsn(5),
            now: row.get(6),
        })
    }
}

/// Where a standby is, as it says.
#[derive(Debug, Clone)]
pub struct Position {
    pub in_recovery: bool,
    pub replay: Option<Lsn>,
    pub received: Option<Lsn>,
    /// Commit time (Unix seconds) of the last transaction replayed.
    pub replay_time: Option<f64>,
    /// `pg_stat_wal_receiver.status` (`streaming`, …), None: no receiver.
    pub receiver: Option<String>,
    /// The primary's WAL end, as it last said.
    pub primary_end: Option<Lsn>,
    pub now: f64,
}

impl Position {
    /// Replay lag in bytes: behind the primary's last known end.
    pub fn lag_bytes(&self) -> Option<u64> {
        let replay = self.replay?;
        let end = self.primary_end.or(self.received)?;
        Some(end.since(replay))
    }

    /// Replay lag in seconds: 0 when streaming with nothing left to
    /// replay, else the age of the last transaction replayed.
    pub fn lag_seconds(&self) -> Option<f64> {
        if self.streaming() && self.lag_bytes() == Some(0) {
            return Some(0.0);
        }
        self.replay_time.map(|t| (self.now - t).max(0.0))
    }

    pub fn streaming(&self) -> bool {
        self.receiver.as_deref() == Some("streaming")
    }
}

/// The settings a hot standby must hold at least at the primary's values
/// (PostgreSQL refuses to replay otherwise), from `pg_controldata`.
fn primary_minimums(bin: &PgBin, datadir: &Path) -> Result<Vec<(&'static str, u64)>, StandbyError> {
    let out = std::process::Command::new(bin.dir.join("pg_controldata"))
        .arg("-D")
        .arg(datadir)
        .env_clear()
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| StandbyError::Controldata(e.to_string()))?;
    if !out.status.success() {
        return Err(StandbyError::Controldata(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let read = |label: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|v| v.trim().trim_start_matches(':').trim().parse().ok())
    };
    let mut settings = Vec::new();
    for (label, name, floor) in [
        ("max_connections setting", "max_connections", 20),
        ("max_worker_processes setting", "max_worker_processes", 8),
        ("max_wal_senders setting", "max_wal_senders", 0),
        ("max_prepared_xacts setting", "max_prepared_transactions", 0),
        (
            "max_locks_per_xact setting",
            "max_locks_per_transaction",
            64,
        ),
    ] {
        let v = read(label).unwrap_or(floor).max(floor);
        settings.push((name, v));
    }
    Ok(settings)
}

/// Make every file under `dir` (its links too, not followed) owned by
/// `user`: a refresh's writable snapshot of the standby, handed to the
/// finalise, which runs as the instance user.
pub fn chown_tree(dir: &Path, user: &InstanceUser) -> std::io::Result<()> {
    let own = |path: &Path| {
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(rustix::fs::Uid::from_raw(user.uid)),
            Some(rustix::fs::Gid::from_raw(user.gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
    };
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        own(&d)?;
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                todo.push(e.path());
            } else {
                own(&e.path())?;
            }
        }
    }
    Ok(())
}
