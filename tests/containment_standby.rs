//! A source's raw standby is production data: no instance and no user
//! reaches it, and its postmaster is boxed like any other. Attacked for
//! real, on one world following one primary (PostgreSQL on loopback TCP,
//! a replication role with a password in a passfile):
//!
//! * from inside an instance's postmaster (gdb calls `open()` and
//!   `system()` in it, as the instance user, in its box): the standby's
//!   files, its directory, its copy of the password file and its Unix
//!   socket are all refused — the same probes work on the instance's own
//!   files and socket — and so they are for the instance user outside
//!   any box (the second wall: file modes);
//! * from inside the standby's own postmaster (as `draupnir-standby`, in
//!   its box): an instance's files, image snapshots, the daemon's state,
//!   the configured password file and a world-readable file are refused,
//!   and so is every TCP port but the primary's (an instance's, the HTTPS
//!   API's, the SSH server's), while its own files, its password file and
//!   the primary's port work;
//! * nothing a user sees holds the password: `sources [--json]`,
//!   `status`, `/metrics`, the standby's processes' command lines and
//!   environments, the daemon's state and logs, the standby's files; the
//!   conninfo it streams with names `passfile=` only.

mod common;

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::inside::*;
use common::primary::{Primary, REPL_PASSWORD};
use common::shared::Shared;
use common::ssh::{text, SshEnv};
use common::*;

/// The number that names the standby's socket (no TCP listener).
const SOCKET_PORT: u16 = 5432;
use draupnir::core::test_support::process;
use draupnir::core::{ConnectionInfo, InstanceRef, STANDBY_USER};

/// The one world the cases share: a daemon core with its SSH and HTTPS
/// servers, following `prod`, with a ready image and one user's instance.
struct World {
    s: SshEnv,
    primary: Mutex<Primary>,
    primary_port: u16,
    /// The password file the config names (root's, 0600).
    passfile: PathBuf,
    https_port: u16,
    _http: draupnir::http::HttpServer,
    image: draupnir::core::ImageId,
    instance: ConnectionInfo,
    /// A user who is not an admin.
    user_key: PathBuf,
}

static WORLD: OnceLock<Shared<World>> = OnceLock::new();

async fn build() -> World {
    let primary = Primary::new(
        "CREATE TABLE customers (id int PRIMARY KEY, email text);
         INSERT INTO customers SELECT g, 'orig-' || g || '@corp.example' FROM generate_series(1, 50) g;",
    );
    let passfile = primary.passfile(primary.root.path());
    let cfg = TestConfig::new()
        .http(&format!("{DEFAULT_HTTP}\nmetrics = true"))
        .sections(&primary.source_section("prod", &passfile, "slot = \"draupnir_prod\""));
    let s = SshEnv::with_config(cfg, "").await;
    let admin = s.admin();
    let start = std::time::Instant::now();
    loop {
        let v = s.svc().sources(&admin).unwrap();
        let summary = v[0].summary();
        if summary.state == "streaming" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the standby never streamed: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let http = draupnir::http::serve(s.svc().clone(), &s.env.config)
        .await
        .expect("http server starts");
    let image = s.env.ready_image(None).await;
    let instance = s
        .svc()
        .create_instance(&s.env.user("bob"), InstanceRef::Id(image))
        .await
        .unwrap();
    let user_key = s.new_user_key("carol", false);
    World {
        primary_port: primary.port,
        https_port: http.https_addr().expect("https").port(),
        _http: http,
        primary: Mutex::new(primary),
        passfile,
        image,
        instance,
        user_key,
        s,
    }
}

fn teardown(w: &World) {
    w.s.env.teardown();
    let mut p = w.primary.lock().unwrap_or_else(|e| e.into_inner());
    p.stop();
    let _ = std::fs::remove_dir_all(p.root.path());
    let _ = std::fs::remove_dir_all(w.s.work.path());
}

async fn on_world<Fut>(test: impl FnOnce(&'static World) -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    Shared::get(&WORLD, build, teardown).await.run(test).await
}

impl World {
    fn data(&self) -> PathBuf {
        self.s.env.data()
    }

    fn standby(&self) -> PathBuf {
        self.data().join("standbys/prod")
    }

    /// The standby's private copy of the password file.
    fn standby_pgpass(&self) -> PathBuf {
        self.data().join("standbys/.prod.pgpass")
    }

    fn standby_socket(&self) -> PathBuf {
        self.standby().join(format!(".s.PGSQL.{SOCKET_PORT}"))
    }

    fn standby_pid(&self) -> i32 {
        process::running_postmaster(&self.standby()).expect("the standby's postmaster")
    }

    fn instance_dir(&self) -> PathBuf {
        self.data()
            .join("instances")
            .join(self.instance.instance.id.to_string())
    }

    fn instance_socket(&self) -> PathBuf {
        self.instance_dir()
            .join(format!(".s.PGSQL.{}", self.instance.port))
    }

    fn instance_pid(&self) -> i32 {
        process::running_postmaster(&self.instance_dir()).expect("the instance's postmaster")
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// uid and gid of a system user.
fn ids(name: &str) -> (u32, u32) {
    let u = nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("user {name}"));
    (u.uid.as_raw(), u.gid.as_raw())
}

/// Exit status of `sh -c cmd` run as `user`, outside any box.
fn unboxed_as(user: &str, cmd: &str) -> i64 {
    let (uid, gid) = ids(user);
    let status = Command::new("/bin/sh")
        .args(["-c", cmd])
        .uid(uid)
        .gid(gid)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("sh");
    i64::from(status.code().expect("an exit code"))
}

/// The Perl command that opens `path` for reading (a directory: lists
/// it): exit 0, or the errno.
fn open_command(path: &Path) -> String {
    format!(
        "/usr/bin/perl -e 'if (-d $ARGV[0]) {{ opendir(D, shift) or die $! }} else {{ open(F, shift) or die $! }}' {}",
        path.display()
    )
}

/// The real uid of `pid`.
fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("a Uid line")
}

/// A relation file of the standby's (production rows live in files like it).
fn a_relation_file(standby: &Path) -> PathBuf {
    let db = std::fs::read_dir(standby.join("base"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .max()
        .expect("a database directory");
    std::fs::read_dir(&db)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .expect("a relation file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_reaches_the_standby() {
    on_world(|w| async move {
        let pid = w.instance_pid();
        let own = w.instance_dir();
        let standby = w.standby();
        let (instance_uid, _) = ids(INSTANCE_USER);
        assert_eq!(uid_of(pid), instance_uid, "the instance runs as its user");
        let targets = [
            standby.join("global/pg_control"),
            standby.join("PG_VERSION"),
            a_relation_file(&standby),
            standby.join("postgresql.conf"),
            standby.clone(),
            w.standby_pgpass(),
            w.data().join("standbys"),
        ];
        for t in &targets {
            assert!(t.exists(), "{} is there to attack", t.display());
        }
        assert!(w.standby_socket().exists(), "the standby's socket");

        // Control: the probes work on the instance's own files and socket.
        assert_eq!(open_inside(pid, &own.join("global/pg_control")), Ok(()));
        assert_eq!(open_inside(pid, &own.join("base")), Ok(()));
        assert_eq!(connect_unix_inside(pid, &w.instance_socket()), 0);
        assert_eq!(shell_inside(pid, &format!("ls {} >/dev/null", own.display())), 0);

        // From inside its postmaster: nothing of the standby opens.
        for t in &targets {
            assert_eq!(
                open_inside(pid, t),
                Err(EACCES),
                "{} opened from inside instance {}",
                t.display(),
                w.instance.instance.id
            );
        }
        assert_eq!(
            connect_unix_inside(pid, &w.standby_socket()),
            EACCES,
            "an instance connected to the standby's socket"
        );
        // Nor the primary itself.
        assert_eq!(connect_tcp_inside(pid, w.primary_port), EACCES);
        let spid = w.standby_pid();
        for cmd in [
            format!("ls {} >/dev/null", standby.display()),
            format!("cat {} >/dev/null", w.standby_pgpass().display()),
            format!("cat {} >/dev/null", standby.join("PG_VERSION").display()),
            // What COPY … PROGRAM would try: the standby's socket (peer: root only).
            format!(
                "{PG_BIN}/psql -X -h {} -p {SOCKET_PORT} -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1",
                standby.display()
            ),
            format!("kill -0 {spid}"),
            format!("cat /proc/{spid}/environ >/dev/null"),
            format!("ls /proc/{spid}/cwd/ >/dev/null"),
        ] {
            assert_ne!(shell_inside(pid, &cmd), 0, "`{cmd}` succeeded inside the instance's box");
        }

        // The second wall: the instance user outside any box is refused
        // by file modes alone (and can open its own files that way).
        assert_eq!(unboxed_as(INSTANCE_USER, &open_command(&own.join("PG_VERSION"))), 0);
        for t in &targets {
            assert_eq!(
                unboxed_as(INSTANCE_USER, &open_command(t)),
                EACCES,
                "the instance user opened {}",
                t.display()
            );
        }
        assert_eq!(unboxed_as(INSTANCE_USER, &unix_connect_command(&w.standby_socket())), EACCES);

        // The instance still serves its owner.
        assert_eq!(psql_cert(&w.instance, "SELECT 1").unwrap().trim(), "1");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_is_boxed_to_its_files_and_its_primary() {
    on_world(|w| async move {
        let spid = w.standby_pid();
        let (standby_uid, _) = ids(STANDBY_USER);
        assert_eq!(
            uid_of(spid),
            standby_uid,
            "the standby runs as {STANDBY_USER}"
        );
        let standby = w.standby();
        let canary = Canary::new();
        let snapshot = w.data().join("image_snapshots").join(w.image.to_string());
        let state = w.s.env.config.state_path.clone();
        let ports = [
            ("an instance's", w.instance.port),
            ("the HTTPS API's", w.https_port),
            ("the SSH server's", w.s.port),
        ];

        // Control: its own files, its password file and the primary's port.
        assert_eq!(
            open_inside(spid, &standby.join("global/pg_control")),
            Ok(())
        );
        assert_eq!(open_inside(spid, &w.standby_pgpass()), Ok(()));
        assert_eq!(
            connect_tcp_inside(spid, w.primary_port),
            0,
            "the primary's port"
        );
        // The other ports listen, and the standby user outside its box
        // could reach them and the canary: only the box refuses.
        for (what, port) in ports {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                "{what} port {port} listens"
            );
            assert_eq!(unboxed_as(STANDBY_USER, &tcp_connect_command(port)), 0);
        }
        assert_eq!(unboxed_as(STANDBY_USER, &open_command(&canary.0)), 0);

        // From inside its postmaster: nothing else opens…
        for t in [
            w.instance_dir().join("PG_VERSION"),
            w.instance_dir().join("server.key"),
            snapshot.join("PG_VERSION"),
            snapshot.join("global/pg_control"),
            state.join("draupnir.sqlite3"),
            state.clone(),
            state.join("logs"),
            w.passfile.clone(),
            canary.0.clone(),
            std::env::temp_dir(),
        ] {
            assert_eq!(
                open_inside(spid, &t),
                Err(EACCES),
                "{} opened from inside the standby",
                t.display()
            );
        }
        // … no other TCP port connects…
        for (what, port) in ports {
            assert_eq!(
                connect_tcp_inside(spid, port),
                EACCES,
                "the standby connected to {what} port {port}"
            );
        }
        // … no TCP port to listen on, not even the number that names its
        // socket (it serves nobody over TCP; the box refuses before the
        // port is looked at, so 5432 held elsewhere changes nothing)…
        let free = free_port();
        assert_eq!(unboxed_as(STANDBY_USER, &tcp_listen_command(free)), 0);
        for port in [SOCKET_PORT, free] {
            assert_eq!(
                listen_tcp_inside(spid, port),
                EACCES,
                "the standby listened on TCP port {port}"
            );
        }
        // … and no instance's socket, no signal, no write outside.
        assert_eq!(connect_unix_inside(spid, &w.instance_socket()), EACCES);
        let ipid = w.instance_pid();
        for cmd in [
            format!("cat {} >/dev/null", canary.0.display()),
            format!("kill -0 {ipid}"),
            format!("touch {}.written", canary.0.display()),
            format!("ls {} >/dev/null", w.data().join("instances").display()),
        ] {
            assert_ne!(
                shell_inside(spid, &cmd),
                0,
                "`{cmd}` succeeded inside the standby's box"
            );
        }
        assert!(!Path::new(&format!("{}.written", canary.0.display())).exists());

        // It still streams.
        let admin = w.s.admin();
        let start = std::time::Instant::now();
        while w.s.svc().sources(&admin).unwrap()[0].summary().state != "streaming" {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the standby stopped streaming"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_user_sees_holds_the_password() {
    on_world(|w| async move {
        let pw = REPL_PASSWORD.as_bytes();
        // The passfile really holds it, and the standby's copy too.
        assert!(holds(&std::fs::read(&w.passfile).unwrap(), pw));
        assert!(holds(&std::fs::read(w.standby_pgpass()).unwrap(), pw));

        // What the doors show, to an admin and to a plain user.
        for key in [&w.s.admin_key, &w.user_key] {
            for args in [&["sources"][..], &["sources", "--json"], &["status"]] {
                let o = w.s.ssh(key, args).await;
                if args[0] == "sources" {
                    assert!(o.status.success(), "{args:?}: {}", text(&o));
                    assert!(
                        String::from_utf8_lossy(&o.stdout).contains("prod"),
                        "{args:?}: {}",
                        text(&o)
                    );
                }
                assert!(
                    !holds(&o.stdout, pw) && !holds(&o.stderr, pw),
                    "{args:?} shows the password: {}",
                    text(&o)
                );
            }
        }
        // A user who is not an admin cannot have it made into an image.
        let o = w.s.ssh(&w.user_key, &["refresh-image", "prod"]).await;
        assert!(!o.status.success(), "{}", text(&o));
        assert!(o.stdout.is_empty(), "{}", text(&o));

        let client = common::http::client_for(&w.s.env, ([127, 0, 0, 1], w.https_port).into());
        let metrics = client
            .get(format!("https://localhost:{}/metrics", w.https_port))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            holds(&metrics, b"draupnir_source_lag_seconds{source=\"prod\"}"),
            "{}",
            String::from_utf8_lossy(&metrics)
        );
        assert!(!holds(&metrics, pw), "/metrics shows the password");

        // Every process of the standby (postmaster, startup,
        // walreceiver…): command lines anyone can read, environments.
        let procs = process::processes_in(&w.standby());
        let cmdlines: Vec<Vec<u8>> = procs
            .iter()
            .map(|p| std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default())
            .collect();
        assert!(
            cmdlines.iter().any(|c| holds(c, b"walreceiver")),
            "a walreceiver among {:?}",
            cmdlines.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>()
        );
        for p in &procs {
            for what in ["cmdline", "environ"] {
                let bytes = std::fs::read(format!("/proc/{p}/{what}")).unwrap_or_default();
                assert!(!holds(&bytes, pw), "/proc/{p}/{what} holds the password");
            }
        }

        // The conninfo it streams with names the passfile, not the password.
        let out = Command::new(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-A", "-t", "-h"])
            .arg(w.standby())
            .args(["-p", &SOCKET_PORT.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c"])
            .arg("SELECT conninfo FROM pg_stat_wal_receiver UNION ALL SELECT current_setting('primary_conninfo')")
            .output()
            .expect("psql as root on the standby's socket");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let conninfo = String::from_utf8_lossy(&out.stdout);
        assert_eq!(conninfo.lines().count(), 2, "{conninfo}");
        for l in conninfo.lines() {
            assert!(l.contains("passfile="), "{conninfo}");
        }
        assert!(!holds(&out.stdout, pw), "the conninfo holds the password: {conninfo}");

        // The daemon's state and logs (the standby's own log among them),
        // and the standby's files.
        let logs = w.s.env.config.state_path.join("logs");
        assert!(logs.join("standby-prod.log").is_file());
        // (`data.btrfs` is data_path's own backing file, the standby's
        // password-file copy included.)
        let mut found = files_holding(&w.s.env.config.state_path, &[REPL_PASSWORD]);
        found.retain(|(file, _)| file != "data.btrfs");
        assert!(found.is_empty(), "the daemon's state holds the password: {found:?}");
        let found = files_holding(&w.standby(), &[REPL_PASSWORD]);
        assert!(found.is_empty(), "the standby's files hold the password: {found:?}");
    })
    .await
}
