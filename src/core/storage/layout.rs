//! Where things live under `data_path` (see DESIGN.md, "Disk layout").

use crate::core::model::{ImageId, InstanceId};
use std::path::{Path, PathBuf};

/// The directories under `data_path`.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(data_path: &Path) -> Layout {
        Layout {
            root: data_path.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn uploads(&self) -> PathBuf {
        self.root.join("image_uploads")
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("image_snapshots")
    }

    pub fn instances(&self) -> PathBuf {
        self.root.join("instances")
    }

    /// Sources' standbys (production data: no instance reaches them).
    pub fn standbys(&self) -> PathBuf {
        self.root.join("standbys")
    }

    pub fn upload(&self, image_id: ImageId) -> PathBuf {
        self.uploads().join(image_id.to_string())
    }

    pub fn snapshot(&self, image_id: ImageId) -> PathBuf {
        self.snapshots().join(image_id.to_string())
    }

    pub fn instance(&self, instance_id: InstanceId) -> PathBuf {
        self.instances().join(instance_id.to_string())
    }

    /// Create the three top-level directories (root-only, 0711 so the
    /// instance user can traverse into its own data directories).
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for dir in [
            self.uploads(),
            self.snapshots(),
            self.instances(),
            self.standbys(),
        ] {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        }
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o711))?;
        Ok(())
    }
}
