//! The two threads of a compressed upload: the calling thread decodes
//! (`pump`) while a second one parses the tar and writes the files
//! (reading through `PipedStream`), with a small bounded queue between
//! them and the spent buffers handed back for reuse.

use std::io::Read;

use super::decode::TarStream;
use super::dest::Dest;
use super::walk::{self, TarSource};
use super::{IngestError, Limits, Report, LOG_TARGET};

/// Decoded bytes per piece handed from the decoding thread to the writer.
const PIPE_CHUNK: usize = 256 * 1024;
/// Decoded pieces queued between them (bounds decoding ahead to 2 MiB).
const PIPE_DEPTH: usize = 8;

/// A compressed archive: decode on this thread and parse the tar and
/// write its files on a second one, so that inflating and writing overlap
/// (each alone keeps a core busy; one after the other was the bound of a
/// `.tar.gz` upload). The queue between them is bounded, so decoding stays
/// at most [`PIPE_DEPTH`] chunks ahead: memory stays small whatever the
/// compression ratio, and when the writer stops (a rejected entry, a
/// limit) decoding stops at its next chunk. Errors arrive in stream order,
/// exactly as with a single thread.
pub(super) fn extract_piped<R: Read>(
    stream: &mut TarStream<R>,
    dest: Dest,
    base: Vec<u8>,
    limits: Limits,
) -> (Result<(), IngestError>, Report) {
    let (tx, rx) = std::sync::mpsc::sync_channel(PIPE_DEPTH);
    let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel(PIPE_DEPTH + 2);
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("draupnir-untar".into())
            .spawn_scoped(scope, move || {
                let stream = PipedStream::new(rx, spent_tx);
                let done = walk::extract_entries(stream, dest, base, limits);
                (done, thread_cpu())
            });
        let writer = match writer {
            Ok(w) => w,
            Err(e) => {
                return (
                    Err(IngestError::Internal(format!(
                        "cannot start the extraction thread: {e}"
                    ))),
                    Report::default(),
                )
            }
        };
        let (started, cpu_before) = (std::time::Instant::now(), thread_cpu());
        pump(stream, &tx, &spent_rx);
        let decode_cpu = thread_cpu().saturating_sub(cpu_before);
        drop(tx);
        match writer.join() {
            Ok((done, write_cpu)) => {
                tracing::debug!(
                    target: LOG_TARGET,
                    wall_ms = started.elapsed().as_millis() as u64,
                    decode_cpu_ms = decode_cpu.as_millis() as u64,
                    write_cpu_ms = write_cpu.as_millis() as u64,
                    "ingest threads"
                );
                done
            }
            Err(_) => (
                Err(IngestError::Internal(
                    "the extraction thread panicked".into(),
                )),
                Report::default(),
            ),
        }
    })
}

/// CPU time (user + system) used so far by the calling thread.
fn thread_cpu() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    std::time::Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Decoded bytes from [`pump`] to the writer thread.
enum Piece {
    Data(Vec<u8>),
    /// End of the decoded stream, with what [`TarStream::finish`] found
    /// (reported only if the tar parser gets that far and asks).
    End(Result<(), IngestError>),
    /// Reading or decoding failed here.
    Fail(IngestError),
}

/// Decode `stream` into [`PIPE_CHUNK`] pieces until it ends, fails, or the
/// writer hangs up.
fn pump<R: Read>(
    stream: &mut TarStream<R>,
    tx: &std::sync::mpsc::SyncSender<Piece>,
    spent: &std::sync::mpsc::Receiver<Vec<u8>>,
) {
    loop {
        // A piece the writer is done with, or a new one.
        let mut chunk = spent.try_recv().unwrap_or_default();
        chunk.resize(PIPE_CHUNK, 0);
        let mut filled = 0;
        let mut stop = None;
        while filled < chunk.len() {
            match stream.read_some(&mut chunk[filled..]) {
                Ok(0) => {
                    stop = Some(Piece::End(stream.finish()));
                    break;
                }
                Ok(n) => filled += n,
                Err(e) => {
                    stop = Some(Piece::Fail(e));
                    break;
                }
            }
        }
        if filled > 0 {
            chunk.truncate(filled);
            if tx.send(Piece::Data(chunk)).is_err() {
                return; // the writer stopped; its result says why
            }
        }
        if let Some(last) = stop {
            let _ = tx.send(last);
            return;
        }
    }
}

/// The writer thread's end of [`extract_piped`].
struct PipedStream {
    rx: std::sync::mpsc::Receiver<Piece>,
    /// Spent pieces go back to [`pump`] to be filled again.
    spent: std::sync::mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    at: usize,
    pos: u64,
    end: Option<Result<(), IngestError>>,
}

impl PipedStream {
    fn new(
        rx: std::sync::mpsc::Receiver<Piece>,
        spent: std::sync::mpsc::SyncSender<Vec<u8>>,
    ) -> Self {
        PipedStream {
            rx,
            spent,
            cur: Vec::new(),
            at: 0,
            pos: 0,
            end: None,
        }
    }

    /// Makes sure `cur` has unread bytes; false at the end of the stream.
    fn fill(&mut self) -> Result<bool, IngestError> {
        while self.at == self.cur.len() {
            if self.end.is_some() {
                return Ok(false);
            }
            match self.rx.recv() {
                Ok(Piece::Data(chunk)) => {
                    let spent = std::mem::replace(&mut self.cur, chunk);
                    if spent.capacity() == PIPE_CHUNK {
                        let _ = self.spent.try_send(spent);
                    }
                    self.at = 0;
                }
                Ok(Piece::End(finish)) => self.end = Some(finish),
                Ok(Piece::Fail(e)) => return Err(e),
                Err(_) => {
                    return Err(IngestError::Internal(
                        "the decoding thread stopped early".into(),
                    ))
                }
            }
        }
        Ok(true)
    }

    /// Takes up to `max` unread bytes of `cur`.
    fn take(&mut self, max: usize) -> &[u8] {
        let n = max.min(self.cur.len() - self.at);
        let out = &self.cur[self.at..self.at + n];
        self.at += n;
        self.pos += n as u64;
        out
    }
}

impl TarSource for PipedStream {
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, IngestError> {
        if !self.fill()? {
            return Ok(0);
        }
        let data = self.take(buf.len());
        let n = data.len();
        buf[..n].copy_from_slice(data);
        Ok(n)
    }

    /// File contents are written straight from the piece, not copied first.
    fn next_slice<'a>(
        &'a mut self,
        max: usize,
        _scratch: &'a mut [u8],
    ) -> Result<&'a [u8], IngestError> {
        if !self.fill()? {
            return Ok(&[]);
        }
        Ok(self.take(max))
    }

    fn pos(&self) -> u64 {
        self.pos
    }

    fn finish(&mut self) -> Result<(), IngestError> {
        match self.end.take() {
            Some(r) => r,
            None => Err(IngestError::Internal(
                "finish before the end of the stream".into(),
            )),
        }
    }
}
#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::super::{extract, IngestError};
    use std::cell::Cell;
    use std::io::{self, Read};
    use std::path::Path;
    use std::rc::Rc;
    /// A reader that counts what was taken from it.
    struct Counted<'a> {
        data: &'a [u8],
        taken: Rc<Cell<u64>>,
    }

    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = Read::read(&mut self.data, buf)?;
            self.taken.set(self.taken.get() + n as u64);
            Ok(n)
        }
    }

    #[test]
    fn decoding_stops_soon_after_the_writer_refuses() {
        // A refused first entry, then 16 MiB that does not compress: the
        // decoding thread must not read on much past the refusal.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..16 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let data = gz(&archive(|a| {
            file(a, "../evil", b"x");
            file(a, "noise", &noise);
        }));
        assert!(data.len() > 16 << 20);
        let env = Env::new();
        let taken = Rc::new(Cell::new(0));
        let source = Counted {
            data: &data,
            taken: taken.clone(),
        };
        let e = extract(source, &env.root, Path::new(""), &opts()).unwrap_err();
        assert!(matches!(e, IngestError::BadEntry { .. }), "{e}");
        assert!(taken.get() < 6 << 20, "read {} bytes", taken.get());
        assert!(env.listing().is_empty());
        env.assert_contained();
    }

    #[test]
    fn tar_split_over_two_gzip_members_is_truncated() {
        // Errors come in stream order with the decoding thread too: the
        // tar ends early (first member) before the second member is seen.
        let tar = archive(|a| file(a, "a", b"hello"));
        let (first, second) = tar.split_at(tar.len() / 2);
        let mut data = gz(first);
        data.extend_from_slice(&gz(second));
        let env = Env::new();
        let e = env.extract(&data).unwrap_err();
        assert!(matches!(e, IngestError::Truncated(_)), "{e}");
    }
}
