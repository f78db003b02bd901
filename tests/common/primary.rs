//! A production primary of the tests' own: `initdb`'d, listening on a
//! loopback TCP port (the way a real primary is reached), with a
//! replication role that logs in with a password (scram) and a
//! `pg_hba.conf` line for replication from loopback only. Its own
//! superuser works through a socket in its directory. Stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use super::*;

pub const REPL_USER: &str = "draupnir_replica";
pub const REPL_PASSWORD: &str = "s3cret-repl-pw";

pub struct Primary {
    pub root: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    /// Its bootstrap superuser.
    pub superuser: String,
    pg: Option<Child>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

impl Primary {
    /// A running primary with the replication role and `sql` planted.
    pub fn new(sql: &str) -> Primary {
        Self::with_superuser(sql, "postgres")
    }

    /// A primary whose bootstrap superuser is `superuser`.
    pub fn with_superuser(sql: &str, superuser: &str) -> Primary {
        let root = tempfile::Builder::new()
            .prefix("drp-primary-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = root.path().join("pgdata");
        initdb_as(&data, superuser);
        let hba =
            "local all all trust\nhost replication draupnir_replica 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let mut p = Primary {
            root,
            data,
            port: free_port(),
            superuser: superuser.to_string(),
            pg: None,
        };
        p.start();
        p.sql(&format!(
            "CREATE ROLE {REPL_USER} REPLICATION LOGIN PASSWORD '{REPL_PASSWORD}'"
        ))
        .unwrap();
        if !sql.is_empty() {
            p.sql(sql).unwrap();
        }
        p
    }

    /// A libpq password file for the replication role (0600, root's).
    pub fn passfile(&self, dir: &Path) -> PathBuf {
        let path = dir.join("primary.pgpass");
        std::fs::write(
            &path,
            format!("127.0.0.1:{}:*:{REPL_USER}:{REPL_PASSWORD}\n", self.port),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// The `[sources.NAME]` section following this primary.
    pub fn source_section(&self, name: &str, passfile: &Path, extra: &str) -> String {
        format!(
            "[sources.{name}]\nprimary_conninfo = \"host=127.0.0.1 port={} user={REPL_USER}\"\npassfile = \"{}\"\n{extra}\n",
            self.port,
            passfile.display()
        )
    }

    pub fn start(&mut self) {
        let pg = as_instance_user("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-p", &self.port.to_string()])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the primary");
        self.pg = Some(pg);
        for _ in 0..800 {
            if self.sql("SELECT 1").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the primary never started");
    }

    /// Run `sql` as its superuser in `postgres`.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        psql_socket(&self.data, self.port, &self.superuser, "postgres", sql)
    }

    /// Fast shutdown, waited for.
    pub fn stop(&mut self) {
        stop_fast(&mut self.pg);
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.stop();
    }
}
