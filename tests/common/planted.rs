//! A data directory of our own to plant an upload in: initdb'd, started
//! as the instance user on a socket in its own directory, filled with
//! whatever SQL a test wants, then stopped cleanly and packed.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use super::*;

/// A data directory of our own, started as the instance user on a socket
/// in its own directory (trust, as initdb leaves it).
pub struct Planted {
    _root: tempfile::TempDir,
    pub data: PathBuf,
    pg: Option<Child>,
    superuser: String,
}

impl Planted {
    pub fn new() -> Planted {
        Self::with_superuser("postgres")
    }

    /// A data directory whose bootstrap superuser is `superuser`.
    pub fn with_superuser(superuser: &str) -> Planted {
        let root = tempfile::Builder::new()
            .prefix("drp-plant-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let data = root.path().join("pgdata");
        if superuser == "postgres" {
            initdb(&data);
        } else {
            std::fs::create_dir(&data).unwrap();
            let owner = nix::unistd::User::from_name(INSTANCE_USER)
                .unwrap()
                .unwrap();
            std::os::unix::fs::chown(&data, Some(owner.uid.as_raw()), Some(owner.gid.as_raw()))
                .unwrap();
            check(
                as_instance_user("initdb")
                    .args(["-U", superuser, "--auth=trust", "-E", "UTF8"])
                    .args(["--locale=C", "-D"])
                    .arg(&data),
            );
        }
        let pg = as_instance_user("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=", "-c", "fsync=off", "-p", "5432"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let p = Planted {
            _root: root,
            data,
            pg: Some(pg),
            superuser: superuser.to_string(),
        };
        for _ in 0..400 {
            if p.sql("postgres", "SELECT 1").is_ok() {
                return p;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("planted postgres never started");
    }

    /// Run `sql` as `postgres` in `db` through the socket.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, String> {
        psql_socket(&self.data, 5432, &self.superuser, db, sql)
    }

    pub fn plant(&self, db: &str, sql: &str) {
        if let Err(e) = self.sql(db, sql) {
            panic!("planting in {db}: {e}");
        }
    }

    /// Stop cleanly and pack the data directory.
    pub fn stop_and_pack(mut self) -> Vec<u8> {
        self.stop();
        pack(&self.data)
    }

    pub fn stop(&mut self) {
        stop_fast(&mut self.pg);
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        self.stop();
    }
}
