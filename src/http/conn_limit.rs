//! Caps on open HTTP(S) connections: in all (`max_connections`) and per
//! client address (`max_connections_per_address`), per listener. A
//! connection over either cap is closed as soon as it is accepted, before
//! any TLS or HTTP work; one under them holds its place until it closes.
//! The total cap sits well below the open-file limit, so a flood of slow
//! clients runs this listener out of places, never the process out of
//! descriptors that SSH and instances need.
//!
//! "One address" is one IPv4 address or one IPv6 /64 (what one host
//! usually has to itself): the core's [`address_key`], which the SSH door
//! uses too.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;

use crate::core::address_key;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// An [`Accept`] that counts connections and refuses those over the caps.
#[derive(Clone)]
pub struct ConnLimit {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_address: usize,
}

impl ConnLimit {
    pub fn new(max_total: usize, max_per_address: usize) -> ConnLimit {
        ConnLimit {
            counts: Arc::default(),
            max_total,
            max_per_address,
        }
    }

    /// A place for a connection from `ip`, or why there is none.
    fn admit(&self, ip: IpAddr) -> io::Result<Place> {
        let mut c = self
            .counts
            .lock()
            .map_err(|_| io::Error::other("connection counts poisoned"))?;
        if c.total >= self.max_total {
            return Err(io::Error::other(format!(
                "{} HTTP connections open (max_connections)",
                c.total
            )));
        }
        let n = c.per_address.entry(ip).or_insert(0);
        if *n >= self.max_per_address {
            return Err(io::Error::other(format!(
                "{n} HTTP connections open from {ip} (max_connections_per_address)"
            )));
        }
        *n += 1;
        c.total += 1;
        Ok(Place {
            counts: self.counts.clone(),
            ip,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }
}

/// One connection's place under the caps; given back on drop.
struct Place {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.per_address.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_address.remove(&self.ip);
                }
            }
        }
    }
}

impl<S> Accept<TcpStream, S> for ConnLimit {
    type Stream = Counted;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Counted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .and_then(|peer| self.admit(address_key(peer.ip())))
            .map(|place| {
                (
                    Counted {
                        stream: super::linger::Linger::new(stream, place),
                    },
                    service,
                )
            });
        std::future::ready(admitted)
    }
}

/// An accepted connection holding its place.
pub struct Counted {
    /// Closed lingeringly (see [`super::linger`]), holding its place
    /// until the drain ends.
    stream: super::linger::Linger,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_all_and_per_address() {
        let l = ConnLimit::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_err(), "per address");
        let _b1 = l.admit(b).unwrap();
        assert!(l.admit(b).is_err(), "in all");
        assert_eq!(l.open(), 3);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.admit(a).unwrap();
    }
}
