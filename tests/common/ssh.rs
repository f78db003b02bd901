//! SSH test harness: a [`TestEnv`] plus an in-process SSH server on a
//! random local port, an admin key made with `ssh-keygen`, and helpers that
//! run the real OpenSSH `ssh`, `scp` and `sftp` against it. The server stops
//! on drop (before the TestEnv tears down mounts and postmasters).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use draupnir::core::{Actor, ImageId, InstanceRef, Service};
use draupnir::ssh::SshServer;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{psql_cert, TestConfig, TestEnv, FIXTURE, FIXTURE_USERS};

pub struct SshEnv {
    /// Declared first: dropped (server stopped) before the TestEnv.
    pub server: Option<SshServer>,
    pub env: TestEnv,
    pub port: u16,
    /// Private key of the bootstrap admin (`alice`).
    pub admin_key: PathBuf,
    /// Keys, batch files and upload sources live here.
    pub work: tempfile::TempDir,
}

/// Make an ed25519 key pair with `ssh-keygen`; returns the private key path.
pub fn keygen(dir: &Path, name: &str, comment: &str) -> PathBuf {
    let path = dir.join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// The public key line of a private key made by [`keygen`].
pub fn public_line(key: &Path) -> String {
    std::fs::read_to_string(key.with_extension("pub"))
        .expect("public key")
        .trim()
        .to_string()
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl SshEnv {
    pub async fn new() -> SshEnv {
        Self::with("", "").await
    }

    /// With extra top-level and `[ssh]` config lines.
    pub async fn with(extra: &str, ssh_extra: &str) -> SshEnv {
        Self::with_http(extra, ssh_extra, super::DEFAULT_HTTP).await
    }

    /// With extra top-level and `[ssh]` lines, and these `[http]` lines.
    pub async fn with_http(extra: &str, ssh_extra: &str, http: &str) -> SshEnv {
        Self::with_config(TestConfig::new().top(extra).http(http), ssh_extra).await
    }

    /// With this config (its `[ssh]` gets the test's admin keys and
    /// `ssh_extra`).
    pub async fn with_config(cfg: TestConfig, ssh_extra: &str) -> SshEnv {
        // `RUST_LOG=debug cargo test …` shows the server's side.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let work = tempfile::Builder::new()
            .prefix("drp-ssh-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let admin_key = keygen(work.path(), "admin", "alice@test");
        let admin_keys = format!(
            "admin_keys = [\"{}\", \"{}\"]",
            super::ADMIN_KEY,
            public_line(&admin_key)
        );
        let ssh_lines = if ssh_extra.is_empty() {
            admin_keys
        } else {
            format!("{admin_keys}\n{ssh_extra}")
        };
        let env = cfg.ssh(&ssh_lines).open().await;
        let mut me = SshEnv {
            server: None,
            env,
            port: 0,
            admin_key,
            work,
        };
        me.start_server().await;
        me
    }

    /// (Re)start the in-process SSH server with the config's `[ssh]`.
    pub async fn start_server(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        let server = draupnir::ssh::serve(self.svc().clone(), &self.env.config.ssh)
            .await
            .expect("ssh server starts");
        self.port = server.local_addr().port();
        self.server = Some(server);
    }

    pub fn stop_server(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }

    pub fn svc(&self) -> &Service {
        self.env.svc()
    }

    pub fn admin(&self) -> Actor {
        self.env.admin()
    }

    /// `user@host:path` for scp.
    pub fn remote(&self, path: &str) -> String {
        format!("draupnir@127.0.0.1:{path}")
    }

    fn common_opts(key: &Path) -> Vec<String> {
        // Fastest on this machine (the server offers only AES-GCM on CPUs
        // with AES instructions).
        client_opts(key, Some("aes128-gcm@openssh.com"))
    }

    /// `ssh -p PORT -i KEY draupnir@127.0.0.1 ARGS…` with stdin closed.
    pub async fn ssh(&self, key: &Path, args: &[&str]) -> Output {
        self.ssh_stdin(key, args, &[]).await
    }

    /// Like [`SshEnv::ssh`], feeding `stdin` to the command.
    pub async fn ssh_stdin(&self, key: &Path, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = Command::new("ssh");
        cmd.args(Self::common_opts(key))
            .args(["-p", &self.port.to_string(), "draupnir@127.0.0.1"])
            .args(args);
        run(cmd, stdin).await
    }

    /// `ssh` with extra options before the host (e.g. `-tt`).
    pub async fn ssh_opts(&self, key: &Path, opts: &[&str], args: &[&str]) -> Output {
        let mut cmd = Command::new("ssh");
        cmd.args(Self::common_opts(key))
            .args(["-p", &self.port.to_string()])
            .args(opts)
            .arg("draupnir@127.0.0.1")
            .args(args);
        run(cmd, &[]).await
    }

    /// The `scp` command with options and key set (not yet run).
    pub fn scp_command(&self, key: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("scp");
        cmd.args(Self::common_opts(key))
            .args(["-P", &self.port.to_string()])
            .args(args)
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// `scp -P PORT -i KEY ARGS…` (run in the work directory).
    pub async fn scp(&self, key: &Path, args: &[&str]) -> Output {
        run(self.scp_command(key, args), &[]).await
    }

    /// `sftp -b BATCH` (run in the work directory).
    pub async fn sftp_batch(&self, key: &Path, batch: &str) -> Output {
        let file = self.work.path().join("batch.sftp");
        std::fs::write(&file, batch).expect("batch file");
        let mut cmd = Command::new("sftp");
        cmd.args(Self::common_opts(key))
            .args(["-P", &self.port.to_string(), "-b"])
            .arg(&file)
            .arg("draupnir@127.0.0.1")
            .current_dir(self.work.path());
        run(cmd, &[]).await
    }

    /// A new user with a fresh key (added by the admin through the core).
    pub fn new_user_key(&self, name: &str, admin: bool) -> PathBuf {
        let key = keygen(self.work.path(), name, &format!("{name}@test"));
        let a = self.admin();
        self.svc()
            .add_user(&a, name, None, admin)
            .expect("add user");
        self.svc()
            .add_key(&a, name, &public_line(&key))
            .expect("add key");
        key
    }

    /// A key nobody registered.
    pub fn stranger_key(&self) -> PathBuf {
        keygen(self.work.path(), "stranger", "stranger@test")
    }

    /// Write `bytes` to `name` in the work directory; returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.work.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, bytes).expect("write file");
        p
    }

    /// `base.tar.gz` (the fixture) in the work directory.
    pub fn base_tar_gz(&self) -> PathBuf {
        self.file("base.tar.gz", &FIXTURE.tar_gz)
    }

    /// The fixture unpacked as a plain data directory `work/<name>`.
    pub fn datadir(&self, name: &str) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut ar = tar::Archive::new(&FIXTURE.tar[..]);
        ar.set_preserve_permissions(true);
        ar.unpack(&dir).expect("unpack fixture");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        dir
    }

    /// A new image (uploading) created by the admin.
    pub fn new_image(&self) -> ImageId {
        self.svc()
            .create_image(&self.admin(), super::NewImage::not_personal())
            .expect("create image")
            .id
    }

    /// Finalise the image, start an instance and query it with psql over
    /// certificate auth: the end of every upload test.
    pub async fn assert_usable(&self, image: ImageId) {
        let a = self.admin();
        self.svc()
            .finalise_image(&a, image, None)
            .await
            .unwrap_or_else(|e| panic!("finalise image {image}: {e}"));
        let info = self
            .svc()
            .create_instance(&a, InstanceRef::Id(image))
            .await
            .unwrap_or_else(|e| panic!("instance of image {image}: {e}"));
        let count =
            tokio::task::spawn_blocking(move || psql_cert(&info, "SELECT count(*) FROM users"))
                .await
                .expect("psql task");
        assert_eq!(count.as_deref(), Ok(FIXTURE_USERS.to_string().as_str()));
    }
}

async fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn client");
    if let Some(mut input) = child.stdin.take() {
        let data = stdin.to_vec();
        tokio::spawn(async move {
            let _ = input.write_all(&data).await;
            let _ = input.shutdown().await;
        });
    }
    match tokio::time::timeout(
        std::time::Duration::from_secs(120),
        child.wait_with_output(),
    )
    .await
    {
        Ok(out) => out.expect("client output"),
        Err(_) => panic!("client timed out: {cmd:?}"),
    }
}

/// Options for the real OpenSSH clients (`ssh`, `scp`, `sftp`) against a
/// server of our own: no user config, no host key checks, no agent, only
/// `key`; `cipher` forced, or (`None`) left to the client and server.
pub fn client_opts(key: &Path, cipher: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "ConnectTimeout=20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(cipher) = cipher {
        v.extend(["-c".to_string(), cipher.to_string()]);
    }
    v.extend(["-i".to_string(), key.display().to_string()]);
    v
}
