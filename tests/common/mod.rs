//! Shared fixtures for the end-to-end tests: one real `initdb`'d data
//! directory per test binary (packed as `.tar` and `.tar.gz`), and per test
//! a private btrfs loop mount, state directory and port range, torn down
//! on drop even when the test fails.
#![allow(dead_code)]

pub mod http;
pub mod inside;
pub mod planted;
pub mod primary;
pub mod shared;
pub mod ssh;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use draupnir::config::Config;
use draupnir::core::test_support::process;
pub use draupnir::core::NewImage;
use draupnir::core::{Actor, ConnectionInfo, ImageId, Service, UploadTarget};

pub const ADMIN_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";
pub const INSTANCE_USER: &str = "draupnir-instance";
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The `[http]` section tests get unless they ask for another: HTTPS on a
/// free loopback port.
pub const DEFAULT_HTTP: &str = "listen_address = \"127.0.0.1:0\"";

/// Rows the fixture's `users` table holds.
pub const FIXTURE_USERS: i64 = 100;

/// The fixture data directory, packed once per test binary.
pub struct Fixture {
    /// The stopped data directory, packed.
    pub tar: Vec<u8>,
    pub tar_gz: Vec<u8>,
    /// `pg_basebackup -D - -Ft -X fetch -c fast -P` (the README's line) of the
    /// running fixture server.
    pub basebackup: Vec<u8>,
}

pub static FIXTURE: LazyLock<Fixture> = LazyLock::new(build_fixture);

/// Run `cmd`; its stdout, or a panic with everything it printed.
pub fn check(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `PG_BIN/prog` run as the instance user, with a clean environment.
pub fn as_instance_user(prog: &str) -> Command {
    let (uid, gid) = instance_ids();
    let mut c = Command::new(Path::new(PG_BIN).join(prog));
    std::os::unix::process::CommandExt::uid(&mut c, uid);
    std::os::unix::process::CommandExt::gid(&mut c, gid);
    c.env_clear().env("PATH", "/usr/bin:/bin").current_dir("/");
    c
}

/// A new data directory at `data` (which must not exist), owned by the
/// instance user: `initdb` with a `postgres` superuser, trust, UTF8, C.
pub fn initdb(data: &Path) {
    initdb_as(data, "postgres")
}

/// [`initdb`] with another bootstrap superuser.
pub fn initdb_as(data: &Path, superuser: &str) {
    let (uid, gid) = instance_ids();
    std::fs::create_dir(data).expect("mkdir data directory");
    std::os::unix::fs::chown(data, Some(uid), Some(gid)).expect("chown data directory");
    check(
        as_instance_user("initdb")
            .args(["-U", superuser, "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C", "-D"])
            .arg(data),
    );
}

fn instance_ids() -> (u32, u32) {
    let u = draupnir::core::test_support::cluster::InstanceUser::ensure(INSTANCE_USER)
        .expect("instance user");
    (u.uid, u.gid)
}

fn build_fixture() -> Fixture {
    let root = tempfile::Builder::new()
        .prefix("drp-fix-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = root.path().join("pgdata");
    initdb(&data);
    let mut pg = as_instance_user("postgres")
        .arg("-D")
        .arg(&data)
        .args(["-c", "listen_addresses=", "-c", "fsync=off", "-p", "5432"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", data.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fixture postgres");
    let sql = format!(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, secret text);
         INSERT INTO users SELECT g, 'user' || g || '@example.com', md5(g::text) FROM generate_series(1, {FIXTURE_USERS}) g;
         CREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES users(id), total numeric);
         INSERT INTO orders (user_id, total) SELECT (g % {FIXTURE_USERS}) + 1, g * 1.5 FROM generate_series(1, 500) g;
         CREATE ROLE app LOGIN;
         CREATE TABLE app_owned (x int); ALTER TABLE app_owned OWNER TO app;
         CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;"
    );
    let mut ok = false;
    for _ in 0..400 {
        let out = as_instance_user("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&data)
            .args(["-p", "5432", "-U", "postgres", "-d", "postgres", "-c", &sql])
            .output()
            .expect("psql");
        if out.status.success() {
            ok = true;
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No such file")
                || err.contains("starting up")
                || err.contains("connection"),
            "fixture sql failed: {err}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let basebackup = if ok {
        let out = as_instance_user("pg_basebackup")
            .args(["-h"])
            .arg(&data)
            .args([
                "-p", "5432", "-U", "postgres", "-D", "-", "-Ft", "-X", "fetch", "-c", "fast", "-P",
            ])
            .output()
            .expect("pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    } else {
        Vec::new()
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pg.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = pg.wait();
    assert!(ok, "fixture postgres never accepted the setup SQL");
    let tar = pack(&data);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let tar_gz = gz.finish().unwrap();
    Fixture {
        tar,
        tar_gz,
        basebackup,
    }
}

/// Pack a directory the way `tar -C dir -cf - .` would.
pub fn pack(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).expect("pack");
    b.into_inner().expect("pack")
}

/// Copy the fixture's entries into a new archive; `edit` sees each
/// entry's path (without a leading `./`), header and body, and drops the
/// entry by returning false. More entries can be appended to the result.
pub fn remap_fixture(
    mut edit: impl FnMut(&Path, &mut tar::Header, &mut Vec<u8>) -> bool,
) -> tar::Builder<Vec<u8>> {
    let mut out = tar::Builder::new(Vec::new());
    let mut ar = tar::Archive::new(&FIXTURE.tar[..]);
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_path_buf();
        let rel = path.strip_prefix(".").unwrap_or(&path).to_path_buf();
        let mut header = entry.header().clone();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut body).unwrap();
        if edit(&rel, &mut header, &mut body) {
            header.set_size(body.len() as u64);
            header.set_cksum();
            out.append(&header, &body[..]).unwrap();
        }
    }
    out
}

/// A tarball of the fixture with `PG_VERSION` replaced.
pub fn fixture_with_version(version: &str) -> Vec<u8> {
    remap_fixture(|rel, _, body| {
        if rel == Path::new("PG_VERSION") {
            *body = format!("{version}\n").into_bytes();
        }
        true
    })
    .into_inner()
    .unwrap()
}

/// The fixture with extra or replaced files.
pub fn fixture_with_files(files: &[(&str, &str)]) -> Vec<u8> {
    let mut out = remap_fixture(|rel, _, _| !files.iter().any(|(n, _)| rel == Path::new(n)));
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(body.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        out.append(&h, body.as_bytes()).unwrap();
    }
    out.into_inner().unwrap()
}

/// One test's world: a btrfs loop mount, a state directory, a port range
/// and a running core. Everything is removed on drop.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config: Config,
    /// The config as TOML, for child processes.
    pub config_text: String,
    pub service: Option<Service>,
}

pub fn port_base() -> u16 {
    // Spread tests over 10000..32000 in blocks of 40: below Linux's
    // ephemeral range (32768 and up), where every `bind(port 0)` of a test
    // running beside (finalise's proof postmaster, HTTP listeners) could
    // land on an instance's port after it was chosen, and a restarted
    // instance would then rightly find its port taken.
    let r: u16 = rand::random::<u16>() % 550;
    10000 + r * 40
}

/// The config a test runs with: the defaults every test shares (its own
/// directories, a free port range, the bootstrap admin key, HTTPS on a free
/// loopback port) and setters for what a test changes. Lines given to a
/// setter replace the defaults of the same keys in that section.
#[derive(Clone, Debug)]
pub struct TestConfig {
    top: String,
    ssh: String,
    http: String,
    oauth: String,
    masking: String,
    /// A `[masking] rules_file` with this text (written into the world).
    rules: Option<String>,
    /// Whole sections appended at the end (`[sources.NAME]`).
    sections: String,
}

/// Rules that cover every column of the fixture's tables (its database
/// is `postgres`): what an operator of a 5.x nightly job adds.
pub const FIXTURE_RULES: &str = r#"
[postgres.public.users]
id = "keep"
email = "email"
secret = "hash"

[postgres.public.orders]
id = "keep"
user_id = "keep"
total = "keep"

[postgres.public.app_owned]
x = "keep"
"#;

/// The `[masking]` section of a test world unless a test gives its own:
/// the fixtures that are not about masking seal script-only images
/// (`unchecked`); the tests of masking give rules and require coverage.
const DEFAULT_MASKING: &str = "require_coverage = false";

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            top: String::new(),
            ssh: String::new(),
            http: DEFAULT_HTTP.to_string(),
            oauth: String::new(),
            masking: DEFAULT_MASKING.to_string(),
            rules: None,
            sections: String::new(),
        }
    }
}

/// Every regular file beneath `dir` that holds one of `needles`' bytes,
/// as (path relative to `dir`, the needle), for searching a data
/// directory for values that must not be there.
pub fn files_holding(dir: &Path, needles: &[&str]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let bytes = std::fs::read(e.path()).unwrap();
                for n in needles {
                    if holds(&bytes, n.as_bytes()) {
                        let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                        found.push((rel, n.to_string()));
                    }
                }
            }
        }
    }
    found
}

/// Whether `needle`'s bytes are somewhere in `hay`.
pub fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// An image with `script`, or with none and declared not personal (the
/// fixtures that are not about masking).
pub fn image_with(script: Option<&str>) -> NewImage {
    match script {
        Some(_) => NewImage::with_script(script),
        None => NewImage::not_personal(),
    }
}

fn add_lines(to: &mut String, lines: &str) {
    if lines.is_empty() {
        return;
    }
    if !to.is_empty() {
        to.push('\n');
    }
    to.push_str(lines);
}

impl TestConfig {
    pub fn new() -> TestConfig {
        TestConfig::default()
    }

    /// Top-level `key = value` lines.
    pub fn top(mut self, lines: &str) -> TestConfig {
        add_lines(&mut self.top, lines);
        self
    }

    /// Lines in `[ssh]`.
    pub fn ssh(mut self, lines: &str) -> TestConfig {
        add_lines(&mut self.ssh, lines);
        self
    }

    /// The `[http]` section's lines (replacing the default).
    pub fn http(mut self, lines: &str) -> TestConfig {
        self.http = lines.to_string();
        self
    }

    /// The `[masking]` section's lines (replacing the default).
    pub fn masking(mut self, lines: &str) -> TestConfig {
        self.masking = lines.to_string();
        self
    }

    /// `[masking] rules_file` with `text` (and coverage required).
    pub fn rules_file(mut self, text: &str) -> TestConfig {
        self.rules = Some(text.to_string());
        self.masking = "require_coverage = true".into();
        self
    }

    /// An `[oauth]` section with these lines.
    pub fn oauth(mut self, lines: &str) -> TestConfig {
        self.oauth = lines.to_string();
        self
    }

    /// The TOML text for a test world rooted at `dir`.
    pub fn text(&self, dir: &Path) -> String {
        let text = base_config_text(dir, &self.top);
        let ssh_extra = self.ssh.as_str();
        let key_of = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
        let ssh_keys: Vec<String> = ssh_extra
            .lines()
            .map(key_of)
            .filter(|k| !k.is_empty())
            .collect();
        let mut out = Vec::new();
        let mut in_ssh = false;
        for line in text.lines() {
            if line.trim_start().starts_with('[') {
                in_ssh = line.trim() == "[ssh]";
                out.push(line.to_string());
                if in_ssh && !ssh_extra.is_empty() {
                    out.push(ssh_extra.to_string());
                }
                continue;
            }
            if in_ssh && ssh_keys.contains(&key_of(line)) {
                continue;
            }
            out.push(line.to_string());
        }
        let mut text = out.join("\n");
        text.push_str(&format!("\n[http]\n{}\n", self.http));
        text.push_str(&format!("[masking]\n{}\n", self.masking));
        if self.rules.is_some() {
            text.push_str(&format!("rules_file = \"{}/rules.toml\"\n", dir.display()));
        }
        if !self.oauth.is_empty() {
            text.push_str(&format!("[oauth]\n{}\n", self.oauth));
        }
        text.push_str(&self.sections);
        text
    }

    /// Whole sections to add at the end (`[sources.NAME]` …).
    pub fn sections(mut self, text: &str) -> TestConfig {
        self.sections.push_str(text);
        self.sections.push('\n');
        self
    }

    /// A running test world with this config.
    pub async fn open(self) -> TestEnv {
        TestEnv::open(self).await
    }
}

fn base_config_text(dir: &Path, extra: &str) -> String {
    let base = port_base();
    format!(
        r#"
data_path = "{d}/data"
state_path = "{d}/state"
loopback_size = "1G"
public_hostname = "localhost"
min_instance_port = {base}
max_instance_port = {max}
max_image_bytes = "512M"
[ssh]
admin_keys = ["{ADMIN_KEY}"]
listen_address = "127.0.0.1:0"
host_key_path = "{d}/keys/ssh_host_ed25519_key"
[postgres]
instance_user = "{INSTANCE_USER}"
start_timeout = "30s"
"#,
        d = dir.display(),
        max = base + 40
    )
    .lines()
    .filter(|l| {
        // Keys given in `extra` replace the defaults above.
        let key = l.split('=').next().unwrap_or("").trim();
        key.is_empty()
            || !extra
                .lines()
                .any(|e| e.split('=').next().unwrap_or("").trim() == key)
    })
    .collect::<Vec<_>>()
    .join("\n")
    .replacen("\n", &format!("\n{extra}\n"), 1)
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        Self::with("").await
    }

    /// A test world whose config has `extra` top-level keys.
    pub async fn with(extra: &str) -> TestEnv {
        TestConfig::new().top(extra).open().await
    }

    /// A test world with this config.
    pub async fn open(cfg: TestConfig) -> TestEnv {
        let _ = &*FIXTURE;
        let dir = tempfile::Builder::new()
            .prefix("drp-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        if let Some(rules) = &cfg.rules {
            std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
        }
        let config_text = cfg.text(dir.path());
        let config = Config::parse(&config_text).expect("test config");
        std::fs::write(dir.path().join("config.toml"), &config_text).unwrap();
        let mut env = TestEnv {
            dir,
            config: config.clone(),
            config_text,
            service: None,
        };
        let (service, _) = Service::open(config).await.expect("service opens");
        env.service = Some(service);
        env
    }

    /// Open the core again on the same directories (a daemon restart).
    pub async fn reopen(&mut self) -> draupnir::core::ReconcileReport {
        if let Some(s) = self.service.take() {
            s.shutdown();
        }
        let (service, report) = Service::open(self.config.clone()).await.expect("reopen");
        self.service = Some(service);
        report
    }

    pub fn svc(&self) -> &Service {
        self.service.as_ref().expect("service")
    }

    pub fn admin(&self) -> Actor {
        self.svc()
            .actor_for("alice")
            .unwrap()
            .expect("bootstrap admin")
    }

    pub fn user(&self, name: &str) -> Actor {
        let admin = self.admin();
        if let Some(a) = self.svc().actor_for(name).unwrap() {
            return a;
        }
        // Two tests on a shared world may add the same user at once: the
        // loser finds it made.
        if let Err(e) = self.svc().add_user(&admin, name, None, false) {
            assert!(self.svc().actor_for(name).unwrap().is_some(), "{e}");
        }
        self.svc().actor_for(name).unwrap().unwrap()
    }

    pub fn data(&self) -> PathBuf {
        self.config.data_path.clone()
    }

    /// Create an image and upload the fixture into it (not finalised:
    /// a raw upload).
    pub async fn uploaded_image(&self, script: Option<&str>) -> ImageId {
        let admin = self.admin();
        let img = self.svc().create_image(&admin, image_with(script)).unwrap();
        self.svc()
            .ingest(
                &admin,
                img.id,
                UploadTarget::File("base.tar.gz".into()),
                &FIXTURE.tar_gz[..],
            )
            .await
            .expect("upload");
        img.id
    }

    /// Create an image, upload the fixture, finalise it.
    pub async fn ready_image(&self, script: Option<&str>) -> ImageId {
        let id = self.uploaded_image(script).await;
        self.svc()
            .finalise_image(&self.admin(), id, None)
            .await
            .expect("finalise");
        id
    }

    /// Subvolume names under data_path/<kind>.
    pub fn entries(&self, kind: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data().join(kind))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn postmasters(&self) -> Vec<(i32, PathBuf)> {
        process::postmasters_beneath(&self.data())
    }
}

impl TestEnv {
    /// Stop the core, kill its postmasters and unmount: what drop does,
    /// for a world shared by a whole test binary (torn down at exit).
    pub fn teardown(&self) {
        if let Some(s) = &self.service {
            s.shutdown();
        }
        unmount_world(&self.config.data_path);
        let _ = std::fs::remove_dir_all(self.dir.path());
    }
}

fn unmount_world(data_path: &Path) {
    kill_postmasters_beneath(data_path);
    for _ in 0..50 {
        let out = Command::new("umount")
            .arg(data_path)
            .stderr(Stdio::null())
            .status();
        if matches!(out, Ok(s) if s.success()) || !is_mounted(data_path) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(s) = self.service.take() {
            s.shutdown();
        }
        unmount_world(&self.config.data_path);
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.as_str()))
}

/// Kill every postgres running beneath `root` (test teardown).
pub fn kill_postmasters_beneath(root: &Path) {
    for _ in 0..100 {
        let pids = all_postgres_beneath(root);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_postgres_beneath(root: &Path) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd.starts_with(root) && process::alive(pid) {
                v.push(pid);
            }
        }
    }
    v
}

/// The three PEM files of an instance in a private directory.
pub struct ClientFiles {
    pub dir: tempfile::TempDir,
}

impl ClientFiles {
    pub fn new(info: &ConnectionInfo) -> ClientFiles {
        let dir = tempfile::tempdir().unwrap();
        for (name, pem) in [
            ("root.crt", &info.credentials.ca_certificate),
            ("client.crt", &info.credentials.client_certificate),
            ("client.key", info.credentials.client_key.expose()),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        ClientFiles { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Run SQL through the real `psql` with the instance's client certificate
/// (sslmode=verify-ca), as a developer would after `env`.
pub fn psql_cert(info: &ConnectionInfo, sql: &str) -> Result<String, String> {
    let files = ClientFiles::new(info);
    psql(
        &format!(
            "host=127.0.0.1 port={} user={} dbname={} sslmode=verify-ca sslrootcert={} sslcert={} sslkey={}",
            info.port,
            info.user,
            info.database,
            files.path("root.crt"),
            files.path("client.crt"),
            files.path("client.key")
        ),
        sql,
    )
}

/// Run SQL through `psql` with an explicit connection string.
pub fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Used bytes of the file system at `path`, after flushing it.
pub fn fs_used(path: &Path) -> u64 {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = rustix::fs::syncfs(&f);
    }
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    (st.blocks() - st.blocks_free()) as u64 * st.fragment_size() as u64
}

/// Run `sql` with `psql` as the instance user through the socket in
/// `socket_dir`: its output, trimmed, or its error.
pub fn psql_socket(
    socket_dir: &Path,
    port: u16,
    user: &str,
    db: &str,
    sql: &str,
) -> Result<String, String> {
    let out = as_instance_user("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(socket_dir)
        .args(["-p", &port.to_string(), "-U", user, "-d", db, "-c", sql])
        .output()
        .expect("psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Stop a postgres we started ourselves: fast shutdown (SIGINT), waited for.
pub fn stop_fast(pg: &mut Option<std::process::Child>) {
    if let Some(mut pg) = pg.take() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pg.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = pg.wait();
    }
}
