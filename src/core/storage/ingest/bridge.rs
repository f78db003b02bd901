//! The chunk bridge between the async side and the blocking extractor:
//! [`ChunkSender`] queues the uploader's chunks, [`spawn_extract`] and
//! [`spawn_write_plain`] run [`extract`] / [`write_plain`] on a
//! `spawn_blocking` thread reading them through `ChannelReader`, and the
//! pipeline's timing (waiting for the network versus working) is logged.

use std::io::{self, Read};
use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[cfg(test)]
use super::COPY_BUF;
use super::{extract, write_plain, IngestClosed, IngestError, Options, Report, LOG_TARGET};

/// Chunks buffered between the async side and the blocking extractor.
const CHANNEL_CAPACITY: usize = 16;

/// Sending half of [`spawn_extract`] / [`spawn_write_plain`]. Dropping it
/// ends the stream.
#[derive(Debug)]
pub struct ChunkSender {
    tx: mpsc::Sender<Chunk>,
}

type Chunk = Result<Vec<u8>, io::Error>;

impl ChunkSender {
    /// Queues the next chunk of the upload. Fails with [`IngestClosed`] when
    /// the extractor has already stopped (usually because it rejected the
    /// upload); the join handle then carries the reason.
    pub async fn send(&self, chunk: Vec<u8>) -> Result<(), IngestClosed> {
        if chunk.is_empty() {
            return if self.tx.is_closed() {
                Err(IngestClosed)
            } else {
                Ok(())
            };
        }
        self.tx.send(Ok(chunk)).await.map_err(|_| IngestClosed)
    }

    /// Ends the stream with an error (e.g. the uploader disconnected): the
    /// extraction fails with [`IngestError::Source`] instead of reporting a
    /// truncated archive.
    pub async fn abort(self, err: io::Error) {
        // If the extractor already stopped it has its own error; nothing to do.
        let _ = self.tx.send(Err(err)).await;
    }

    /// True once the extractor has stopped reading.
    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Async bridge to [`extract`]: the extraction runs on
/// `tokio::task::spawn_blocking`, reading the chunks given to the returned
/// [`ChunkSender`]. Must be called from within a tokio runtime.
pub fn spawn_extract(
    root: PathBuf,
    subdir: PathBuf,
    opts: Options,
) -> (ChunkSender, JoinHandle<Result<Report, IngestError>>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let handle = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut reader = ChannelReader::new(rx);
        let result = extract(&mut reader, &root, &subdir, &opts);
        log_pipeline("extract", started, &reader, &result);
        result
    });
    (ChunkSender { tx }, handle)
}

/// Async bridge to [`write_plain`], like [`spawn_extract`].
pub fn spawn_write_plain(
    root: PathBuf,
    rel: PathBuf,
    opts: Options,
) -> (ChunkSender, JoinHandle<Result<Report, IngestError>>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let handle = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut reader = ChannelReader::new(rx);
        let result = write_plain(&mut reader, &root, &rel, &opts);
        log_pipeline("write_plain", started, &reader, &result);
        result
    });
    (ChunkSender { tx }, handle)
}

/// Copies an `AsyncRead` to completion through [`spawn_extract`].
#[cfg(test)]
pub async fn extract_async<R: tokio::io::AsyncRead + Unpin>(
    mut source: R,
    root: PathBuf,
    subdir: PathBuf,
    opts: Options,
) -> Result<Report, IngestError> {
    use tokio::io::AsyncReadExt;
    let (tx, handle) = spawn_extract(root, subdir, opts);
    loop {
        let mut chunk = vec![0u8; COPY_BUF];
        match source.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                chunk.truncate(n);
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tx.abort(e).await;
                return join(handle).await;
            }
        }
    }
    drop(tx);
    join(handle).await
}

#[cfg(test)]
async fn join(handle: JoinHandle<Result<Report, IngestError>>) -> Result<Report, IngestError> {
    match handle.await {
        Ok(result) => result,
        Err(e) => Err(IngestError::Internal(e.to_string())),
    }
}

/// Where the extraction thread's time went: waiting for bytes from the
/// uploader (the network side is the bound) or working (decoding and
/// writing are). Logged at debug level.
fn log_pipeline(
    what: &str,
    started: std::time::Instant,
    reader: &ChannelReader,
    result: &Result<Report, IngestError>,
) {
    let total = started.elapsed();
    tracing::debug!(
        target: LOG_TARGET,
        what,
        ok = result.is_ok(),
        total_ms = total.as_millis() as u64,
        input_wait_ms = reader.waited.as_millis() as u64,
        work_ms = total.saturating_sub(reader.waited).as_millis() as u64,
        chunks = reader.chunks,
        "ingest pipeline"
    );
}

/// Blocking `Read` over the chunk channel (used on a spawn_blocking thread).
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
    /// Time spent waiting for the next chunk.
    waited: std::time::Duration,
    chunks: u64,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            done: false,
            waited: std::time::Duration::ZERO,
            chunks: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.cur.len() {
                let n = buf.len().min(self.cur.len() - self.pos);
                buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            let t = std::time::Instant::now();
            let next = self.rx.blocking_recv();
            self.waited += t.elapsed();
            match next {
                Some(Ok(chunk)) => {
                    self.chunks += 1;
                    self.cur = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.rx.close();
                    return Err(e);
                }
                None => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::*;
    use std::fs;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn extract_async_from_cursor() {
        let env = Env::new();
        let data = gz(&builder_tar());
        let r = extract_async(
            std::io::Cursor::new(data.clone()),
            env.root.clone(),
            PathBuf::new(),
            opts(),
        )
        .await
        .unwrap();
        assert_eq!(r.bytes_in, data.len() as u64);
        check_builder_result(&env, &r);
    }

    #[tokio::test]
    async fn extract_async_from_duplex() {
        use tokio::io::AsyncWriteExt;
        let env = Env::new();
        let data = zst(&dot_tar());
        let (mut w, r) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move {
            for chunk in data.chunks(333) {
                w.write_all(chunk).await.unwrap();
            }
        });
        let report = extract_async(r, env.root.clone(), PathBuf::from("pg_wal"), opts())
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(report.entries, 6);
        assert_eq!(
            fs::read(env.root.join("pg_wal/base/1/1234")).unwrap(),
            b"relation"
        );
    }

    #[tokio::test]
    async fn sender_fails_after_rejection() {
        let env = Env::new();
        let (tx, handle) = spawn_extract(env.root.clone(), PathBuf::new(), opts());
        let evil = archive(|a| entry(a, b"link", b'2', b""));
        let mut closed = false;
        for i in 0..100_000 {
            let chunk = if i == 0 {
                evil.clone()
            } else {
                vec![0u8; 4096]
            };
            if tx.send(chunk).await.is_err() {
                closed = true;
                break;
            }
        }
        assert!(closed, "sender never noticed the extractor stopped");
        assert!(tx.is_closed());
        let e = handle.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[tokio::test]
    async fn sender_drop_midway_is_truncation_and_abort_is_source_error() {
        let env = Env::new();
        let data = builder_tar();
        let (tx, handle) = spawn_extract(env.root.clone(), PathBuf::new(), opts());
        tx.send(data[..3000].to_vec()).await.unwrap();
        drop(tx);
        let e = handle.await.unwrap().unwrap_err();
        assert!(matches!(e, IngestError::Truncated(_)), "{e}");

        let env = Env::new();
        let (tx, handle) = spawn_extract(env.root.clone(), PathBuf::new(), opts());
        tx.send(gz(&data)[..100].to_vec()).await.unwrap();
        tx.abort(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client went away",
        ))
        .await;
        let e = handle.await.unwrap().unwrap_err();
        assert!(matches!(e, IngestError::Source(_)), "{e}");
        assert_eq!(e.to_string(), "error reading upload: client went away");
    }

    #[tokio::test]
    async fn spawn_write_plain_happy() {
        let env = Env::new();
        let (tx, handle) = spawn_write_plain(env.root.clone(), PathBuf::from("a/b"), opts());
        tx.send(b"hello ".to_vec()).await.unwrap();
        tx.send(Vec::new()).await.unwrap();
        tx.send(b"world".to_vec()).await.unwrap();
        drop(tx);
        let r = handle.await.unwrap().unwrap();
        assert_eq!(r.bytes_written, 11);
        assert_eq!(fs::read(env.root.join("a/b")).unwrap(), b"hello world");
    }
}
