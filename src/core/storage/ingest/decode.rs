//! Decoding: sniffs the compression from the first bytes ([`Kind`]), wraps
//! the source in a gzip or zstd decoder, counts the bytes read from the
//! uploader, and tells an uploader's error from a corrupt or truncated
//! compressed stream. [`TarStream`] is the decoded tar byte stream.

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Chain, Cursor, Read};
use std::rc::Rc;

use super::IngestError;

/// Buffer between the source and the decompressor.
const READ_BUF: usize = 64 * 1024;

/// Container format, sniffed from the first bytes of the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tar,
    TarGz,
    TarZst,
}

impl Kind {
    /// Detects the compression from the first (up to 4) bytes of an upload:
    /// gzip `1f 8b`, zstd `28 b5 2f fd`, anything else is taken as plain tar.
    pub fn detect(prefix: &[u8]) -> Kind {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Kind::TarGz
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Kind::TarZst
        } else {
            Kind::Tar
        }
    }

    fn compression(self) -> &'static str {
        match self {
            Kind::Tar => "tar",
            Kind::TarGz => "gzip",
            Kind::TarZst => "zstd",
        }
    }
}

#[derive(Default)]
pub(super) struct SourceState {
    pub(super) bytes_in: Cell<u64>,
    failed: Cell<bool>,
}

/// Counts bytes read from the uploader and remembers whether it failed, so
/// that decoder errors can be told apart from source errors.
struct CountingReader<R> {
    inner: R,
    state: Rc<SourceState>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.state
                    .bytes_in
                    .set(self.state.bytes_in.get().saturating_add(n as u64));
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state.failed.set(true);
                }
                Err(e)
            }
        }
    }
}

type Inner<R> = BufReader<Chain<Cursor<Vec<u8>>, CountingReader<R>>>;

enum Decoded<R: Read> {
    Plain(Inner<R>),
    // Boxed: zlib-rs keeps its state inline, which makes this variant large.
    Gz(Box<flate2::bufread::GzDecoder<Inner<R>>>),
    Zst(zstd::stream::read::Decoder<'static, Inner<R>>),
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::Plain(r) => r.read(buf),
            Decoded::Gz(r) => r.read(buf),
            Decoded::Zst(r) => r.read(buf),
        }
    }
}

/// The decompressed tar byte stream plus error classification.
pub(super) struct TarStream<R: Read> {
    dec: Option<Decoded<R>>,
    pub(super) kind: Kind,
    state: Rc<SourceState>,
    /// Offset in the decompressed stream (for messages).
    pub(super) pos: u64,
}

fn map_source_err(state: &SourceState, kind: Kind, e: io::Error) -> IngestError {
    if state.failed.get() || kind == Kind::Tar {
        IngestError::Source(e)
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        IngestError::Truncated(format!("{} stream ends early", kind.compression()))
    } else {
        IngestError::Decompress {
            format: kind.compression(),
            detail: e.to_string(),
        }
    }
}

impl<R: Read> TarStream<R> {
    pub(super) fn open(source: R, state: Rc<SourceState>) -> Result<Self, IngestError> {
        let mut counting = CountingReader {
            inner: source,
            state: state.clone(),
        };
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match counting.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(IngestError::Source(e)),
            }
        }
        if got == 0 {
            return Err(IngestError::Truncated("the upload is empty".into()));
        }
        let kind = Kind::detect(&magic[..got]);
        let inner = BufReader::with_capacity(
            READ_BUF,
            Read::chain(Cursor::new(magic[..got].to_vec()), counting),
        );
        let dec = match kind {
            Kind::Tar => Decoded::Plain(inner),
            Kind::TarGz => Decoded::Gz(Box::new(flate2::bufread::GzDecoder::new(inner))),
            Kind::TarZst => Decoded::Zst(
                zstd::stream::read::Decoder::with_buffer(inner)
                    .map_err(|e| map_source_err(&state, kind, e))?,
            ),
        };
        Ok(TarStream {
            dec: Some(dec),
            kind,
            state,
            pos: 0,
        })
    }

    /// One `read` call (retrying on EINTR); 0 means end of stream.
    pub(super) fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, IngestError> {
        let Some(dec) = self.dec.as_mut() else {
            return Ok(0);
        };
        loop {
            match dec.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_source_err(&self.state, self.kind, e)),
            }
        }
    }

    /// After the decompressed stream hit EOF: reject anything left in the
    /// compressed input (a second gzip member, garbage after the stream).
    pub(super) fn finish(&mut self) -> Result<(), IngestError> {
        let kind = self.kind;
        let leftover = match self.dec.take() {
            None | Some(Decoded::Plain(_)) => false,
            Some(Decoded::Gz(d)) => {
                let mut inner = d.into_inner();
                !inner
                    .fill_buf()
                    .map_err(|e| map_source_err(&self.state, kind, e))?
                    .is_empty()
            }
            Some(Decoded::Zst(d)) => {
                let mut inner = d.finish();
                !inner
                    .fill_buf()
                    .map_err(|e| map_source_err(&self.state, kind, e))?
                    .is_empty()
            }
        };
        if leftover {
            return Err(IngestError::Decompress {
                format: kind.compression(),
                detail: "trailing data after the end of the stream \
                         (several members or garbage)"
                    .into(),
            });
        }
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::super::{IngestError, Report};

    #[test]
    fn tar_gz_from_builder() {
        let env = Env::new();
        let data = gz(&builder_tar());
        let report = env.extract(&data).unwrap();
        assert_eq!(report.bytes_in, data.len() as u64);
        check_builder_result(&env, &report);
    }

    #[test]
    fn tar_zst_from_builder() {
        let env = Env::new();
        let data = zst(&builder_tar());
        let report = env.extract(&data).unwrap();
        assert_eq!(report.bytes_in, data.len() as u64);
        check_builder_result(&env, &report);
    }

    #[test]
    fn empty_archive_and_empty_upload() {
        let env = Env::new();
        let r = env.extract(&[0u8; 1024]).unwrap();
        assert_eq!(
            r,
            Report {
                bytes_in: 1024,
                bytes_written: 0,
                entries: 0
            }
        );
        let r = env.extract(&gz(&[0u8; 10240])).unwrap();
        assert_eq!(r.entries, 0);
        let e = env.extract(b"").unwrap_err();
        assert!(matches!(e, IngestError::Truncated(_)), "{e}");
    }

    #[test]
    fn gzip_problems() {
        let tar = archive(|a| file(a, "a", b"hello"));
        let good = gz(&tar);

        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 0xff;
        let mut bad_len = good.clone();
        bad_len[n - 1] ^= 0xff;
        let mut two_members = good.clone();
        two_members.extend_from_slice(&gz(b""));
        let mut garbage = good.clone();
        garbage.extend_from_slice(b"\0\0junk");
        let truncated = good[..n - 4].to_vec();
        let mut corrupt = good.clone();
        corrupt[12] ^= 0x55;
        corrupt[13] ^= 0x55;

        for (name, data) in [
            ("crc", bad_crc),
            ("isize", bad_len),
            ("two members", two_members),
            ("garbage", garbage),
            ("truncated", truncated),
            ("corrupt", corrupt),
        ] {
            let env = Env::new();
            let e = env.extract(&data).unwrap_err();
            let msg = e.to_string();
            eprintln!("gzip {name}: {msg}");
            assert!(
                msg.starts_with("gzip stream") || msg.starts_with("archive is"),
                "{name}: {msg}"
            );
            assert!(!msg.contains('\n'));
        }
        let env = Env::new();
        env.extract(&good).unwrap();
    }

    #[test]
    fn zstd_problems() {
        let tar = archive(|a| file(a, "a", b"hello"));
        let good = zst(&tar);
        let n = good.len();
        let mut garbage = good.clone();
        garbage.extend_from_slice(b"junkjunk");
        let mut corrupt = good.clone();
        corrupt[n / 2] ^= 0xff;
        for (name, data) in [
            ("truncated", good[..n - 3].to_vec()),
            ("garbage", garbage),
            ("corrupt", corrupt),
        ] {
            let env = Env::new();
            let e = env.extract(&data).unwrap_err();
            eprintln!("zstd {name}: {e}");
            assert!(
                matches!(
                    e,
                    IngestError::Decompress { .. }
                        | IngestError::Truncated(_)
                        | IngestError::Corrupt(_)
                ),
                "{name}: {e}"
            );
        }
        // Concatenated frames are valid zstd.
        let env = Env::new();
        let mut two = zst(&tar[..512]);
        two.extend_from_slice(&zst(&tar[512..]));
        env.extract(&two).unwrap();
    }
}
