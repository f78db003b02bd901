//! The operator's log for uploads of many files, through the real OpenSSH
//! clients: one `scp -r` of a data directory (SFTP and `-O`) is one INFO
//! line, not one per file; and `sftp ls -l` dates image directories. Alone
//! in its binary: it reads the one process-wide log.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ssh::*;
use draupnir::core::ImageId;

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Everything logged at INFO and above from now on.
fn log_lines() -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = buf.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(move || LogWriter(writer.clone()))
        .init();
    buf
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_r_of_many_files_logs_once_and_sftp_ls_shows_dates() {
    let log = log_lines();
    let s = SshEnv::new().await;
    let dir = s.datadir("datadir");
    let files = walk(&dir);
    assert!(files > 150, "{files} files");
    for opts in [&[][..], &["-O"][..]] {
        let id: ImageId = s.new_image();
        let mut args = opts.to_vec();
        let remote = s.remote(&format!("images/{id}/"));
        args.extend(["-r", "datadir", &remote]);
        let o = s.scp(&s.admin_key, &args).await;
        assert!(o.status.success(), "{}", text(&o));
        // The SFTP session's line is written when the server drops it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = String::from_utf8_lossy(&std::mem::take(&mut *log.lock().unwrap())).to_string();
        let mine: Vec<&str> = text.lines().filter(|l| l.contains("upload")).collect();
        assert_eq!(mine.len(), 1, "{opts:?}: {mine:#?}");
        assert!(
            mine[0].contains(&format!("files={files}"))
                && mine[0].contains("upload finished")
                && (mine[0].contains(&format!("images={id} "))
                    || mine[0].contains(&format!("target=images/{id}/ "))),
            "{}",
            mine[0]
        );
    }

    // sftp ls -l: an image directory is dated when it last changed.
    let o = s.sftp_batch(&s.admin_key, "ls -l /images\n").await;
    assert!(o.status.success(), "{}", text(&o));
    let listing = out(&o);
    assert!(!listing.contains("1970"), "{listing}");
    let now = time::OffsetDateTime::now_utc();
    let month = format!("{}", now.month());
    assert!(listing.contains(&month[..3]), "{listing}");
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}
