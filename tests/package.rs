//! The Debian package: packaging/build-deb.sh builds it around the test
//! binary, `dpkg-deb` shows the expected files and control fields, and
//! `dpkg --root` installs it into a throwaway root (maintainer scripts run
//! chrootless, honouring $DPKG_ROOT): the instance user exists, the
//! directories have their modes, and purging leaves the data.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_draupnir");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn deb_builds_installs_and_purges() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(format!("{REPO}/packaging/build-deb.sh"))
        .arg(dir.path().join("out"))
        .env("DRAUPNIR_BIN", BIN));
    let deb = out
        .lines()
        .find(|l| l.starts_with('/') && l.trim().ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb path printed: {out}"))
        .trim()
        .to_string();

    let list = run(Command::new("dpkg-deb").args(["-c", &deb]));
    for path in [
        "./usr/bin/draupnir",
        "./etc/draupnir/config.toml",
        "./lib/systemd/system/draupnir.service",
        "./usr/share/man/man1/draupnir.1.gz",
        "./usr/share/bash-completion/completions/draupnir",
        "./usr/share/zsh/vendor-completions/_draupnir",
        "./usr/share/draupnir/iptables-rules.sh",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(path)),
            "{path} missing: {list}"
        );
    }
    assert!(list.lines().all(|l| l.contains("root/root")), "{list}");
    let info = run(Command::new("dpkg-deb").args(["-I", &deb]));
    for needle in [
        "Package: draupnir",
        "btrfs-progs",
        "postgresql",
        "iptables",
        "postinst",
        "conffiles",
    ] {
        assert!(info.contains(needle), "{needle}: {info}");
    }
    let conffiles = run(Command::new("dpkg-deb").args(["-I", &deb, "conffiles"]));
    assert_eq!(conffiles.trim(), "/etc/draupnir/config.toml");
    let unit = std::fs::read_to_string(format!("{REPO}/packaging/draupnir.service")).unwrap();
    for needle in [
        "Type=notify",
        "Restart=on-failure",
        "KillMode=process",
        "LimitNOFILE=65536",
        "TasksMax=infinity",
    ] {
        assert!(unit.contains(needle), "{needle}");
    }

    // A throwaway root: a dpkg database and the account files.
    let root = dir.path().join("root");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "etc",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    std::fs::write(root.join("etc/gshadow"), "root:*::\n").unwrap();
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-not-root",
            ])
            .args(args))
    };
    let log = dpkg(&["-i", &deb]);
    assert!(log.contains("draupnir doctor"), "{log}");
    assert_eq!(mode(&root.join("usr/bin/draupnir")), 0o755);
    assert_eq!(mode(&root.join("etc/draupnir/config.toml")), 0o640);
    assert_eq!(mode(&root.join("var/lib/draupnir")), 0o711);
    assert_eq!(mode(&root.join("var/lib/draupnir/state")), 0o700);
    assert_eq!(mode(&root.join("var/lib/draupnir/keys")), 0o700);
    let config = std::fs::read_to_string(root.join("etc/draupnir/config.toml")).unwrap();
    assert!(
        config.contains("host_key_path = \"/var/lib/draupnir/keys/ssh_host_ed25519_key\""),
        "{config}"
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("draupnir-instance:"))
        .unwrap_or_else(|| panic!("no instance user: {passwd}"));
    assert!(line.ends_with(":/nonexistent:/usr/sbin/nologin"), "{line}");
    // The installed binary works and its config parses.
    run(Command::new(root.join("usr/bin/draupnir"))
        .args(["check-config", "--config"])
        .arg(root.join("etc/draupnir/config.toml")));

    // Reinstall (an upgrade) keeps the user and does not duplicate it.
    dpkg(&["-i", &deb]);
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert_eq!(passwd.matches("draupnir-instance:").count(), 1);

    std::fs::write(root.join("var/lib/draupnir/state/draupnir.sqlite3"), "x").unwrap();
    let log = dpkg(&["--purge", "draupnir"]);
    assert!(log.contains("Left in place"), "{log}");
    assert!(!root.join("usr/bin/draupnir").exists());
    assert!(!root.join("etc/draupnir/config.toml").exists());
    assert!(root
        .join("var/lib/draupnir/state/draupnir.sqlite3")
        .exists());
}
