//! Doctor's PostgreSQL checks: installed majors (and those ready images
//! need), the instance user, the postmaster box and the instance user's
//! access to the data directories.

use super::{fail, pass, Check};
use crate::config::Config;
use crate::core::store::Store;

pub(super) fn postgres(config: &Config) -> Check {
    const NAME: &str = "postgres";
    let root = &config.postgres.bin_root;
    if !root.is_dir() {
        return fail(
            NAME,
            format!("[postgres] bin_root {} does not exist", root.display()),
            "apt-get install postgresql (any supported major), or set [postgres] bin_root to the directory holding <major>/bin/postgres",
        );
    }
    let majors = crate::core::postgres::cluster::installed_majors(root);
    if majors.is_empty() {
        return fail(
            NAME,
            format!("no <major>/bin/postgres under {}", root.display()),
            "apt-get install postgresql (any supported major)",
        );
    }
    let mut broken = Vec::new();
    for m in &majors {
        let bin = root.join(m.to_string()).join("bin/postgres");
        let runs = std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !runs {
            broken.push(bin.display().to_string());
        }
    }
    let list = majors
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if broken.is_empty() {
        pass(NAME, format!("majors {list} under {}", root.display()))
    } else {
        fail(
            NAME,
            format!("{} does not run (--version failed)", broken.join(", ")),
            "reinstall that postgresql package",
        )
    }
}

/// Every ready image's PostgreSQL major must still be installed, or its
/// instances cannot start.
pub(super) fn image_majors(config: &Config, store: &Store) -> Check {
    const NAME: &str = "image majors";
    let images = match store.images() {
        Ok(i) => i,
        Err(e) => return fail(NAME, e.to_string(), "see the sqlite check"),
    };
    let installed = crate::core::postgres::cluster::installed_majors(&config.postgres.bin_root);
    let mut missing: Vec<String> = images
        .iter()
        .filter(|i| i.state == crate::core::store::ImageState::Ready)
        .filter_map(|i| i.pg_major.map(|m| (i.id, m)))
        .filter(|(_, m)| !installed.contains(m))
        .map(|(id, m)| format!("image {id} needs PostgreSQL {m}"))
        .collect();
    missing.sort();
    if missing.is_empty() {
        pass(
            NAME,
            format!(
                "every ready image's major is installed ({} images)",
                images.len()
            ),
        )
    } else {
        fail(
            NAME,
            format!(
                "{}, not installed under {}",
                missing.join(", "),
                config.postgres.bin_root.display()
            ),
            "apt-get install postgresql-<major> for each, or destroy those images",
        )
    }
}

pub(super) fn instance_user(config: &Config) -> Check {
    const NAME: &str = "instance_user";
    let name = &config.postgres.instance_user;
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => pass(NAME, format!("{name} (uid {})", u.uid)),
        Ok(None) => fail(
            NAME,
            format!("system user {name} does not exist"),
            format!("useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {name} (the package's postinst does this)"),
        ),
        Err(e) => fail(NAME, format!("cannot look up {name}: {e}"), "check /etc/nsswitch.conf"),
    }
}

/// Can this kernel box postmasters the way `[postgres] confinement` says?
pub(super) fn confinement(config: &Config) -> Check {
    use crate::core::postgres::sandbox::{self, Confinement};
    const NAME: &str = "confinement";
    let support = sandbox::probe();
    match config.postgres.confinement {
        Confinement::Landlock if support.usable() => pass(NAME, support.describe()),
        Confinement::Landlock => fail(
            NAME,
            format!("{}: postmasters cannot be boxed, so none will start", support.describe()),
            "boot Linux 5.13+ with `landlock` in the lsm= parameter, or set [postgres] confinement = \"none\" to run them unconfined",
        ),
        Confinement::None => pass(
            NAME,
            format!(
                "none: postmasters run unconfined (this kernel: {})",
                support.describe()
            ),
        ),
    }
}

/// Can the instance user get to every directory a postmaster needs?
/// Asked as that user (see [`crate::core::postgres::reach`]).
pub(super) fn instance_access(config: &Config) -> Check {
    use crate::core::postgres::reach::{check, postmaster_dirs, ReachError};
    const NAME: &str = "instance access";
    let name = &config.postgres.instance_user;
    let user = match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => crate::core::postgres::cluster::InstanceUser {
            name: name.clone(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        },
        _ => return pass(NAME, "not checked: no instance user (see instance_user)"),
    };
    let dirs = postmaster_dirs(&config.data_path, &config.postgres.bin_root);
    match check(&user, &dirs) {
        Ok(()) => pass(
            NAME,
            format!(
                "{name} reaches {} and {}",
                config.data_path.display(),
                config.postgres.bin_root.display()
            ),
        ),
        Err(ReachError::Blocked(b)) => fail(NAME, b.reason(), b.fix()),
        Err(e @ ReachError::Identity { .. }) => {
            pass(NAME, format!("not checked: {e} (run doctor as root)"))
        }
        Err(e) => fail(NAME, e.to_string(), "run doctor as root"),
    }
}
