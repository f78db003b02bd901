//! `draupnir backup-state` while another thread keeps writing: the copy is
//! a consistent database (integrity_check ok) holding every row committed
//! before the backup began.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use draupnir::core::test_support::Store;

const BIN: &str = env!("CARGO_BIN_EXE_draupnir");

#[test]
fn backup_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "data_path = \"{0}/data\"\nstate_path = \"{0}/state\"\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(d.join("state")).unwrap();
    let store = Arc::new(Store::open(&d.join("state/draupnir.sqlite3")).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                store
                    .insert_user(&format!("user{n}"), None, false)
                    .expect("insert");
                n += 1;
                written.store(n, Ordering::SeqCst);
            }
        })
    };
    while written.load(Ordering::SeqCst) < 200 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for round in 0..3 {
        let before = written.load(Ordering::SeqCst);
        let copy = d.join(format!("copy{round}.sqlite3"));
        let out = Command::new(BIN)
            .arg("backup-state")
            .arg(&copy)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = written.load(Ordering::SeqCst);
        let copy = Store::open_read_only(&copy).unwrap();
        assert_eq!(copy.integrity_check().unwrap(), "ok");
        let rows = copy.users().unwrap().len();
        assert!(
            rows >= before && rows <= after + 1,
            "{before} <= {rows} <= {after}"
        );
        // Only the copy itself: no -wal or partial file left beside it.
        let leftovers: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.contains("partial") || n.ends_with("-wal"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(written.load(Ordering::SeqCst) > 200);
}
