//! Whether a postmaster serves its clients, checked the way they connect.
//!
//! Owns: the addresses clients reach an instance on (from
//! `listen_addresses`: `*` is IPv4 and IPv6 loopback, when the host has
//! IPv6), the check itself (TLS with the instance's client certificate on
//! every one of them, not just the first that answers), and explaining an
//! address that does not answer. The usual cause is another process on
//! the port: postgres then only logs `could not bind IPv4 address
//! "0.0.0.0": Address already in use` and serves the other family alone,
//! so a postmaster that runs is not enough. The owner of a listening
//! socket is found through `/proc/net/tcp{,6}` and the postmaster's file
//! descriptors, never guessed from a log line.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_postgres_rustls::MakeRustlsConnect;

use super::pgconn;
use super::process::{self, Postmaster};

/// One connection attempt's limit (a squatter that accepts and never
/// answers costs this much per attempt).
const ATTEMPT: Duration = Duration::from_secs(2);
/// Once one address serves, how long another may keep failing (and at
/// least how many attempts) before the postmaster is called deaf on it.
/// Postgres opens every listening socket before it accepts anything, so a
/// missing one never appears later.
const DEAF_AFTER: Duration = Duration::from_secs(2);
const DEAF_ATTEMPTS: u32 = 2;
/// Poll intervals: during the first `QUICK_FOR` before anything answered
/// (every millisecond here is a millisecond of `new-instance`), and after
/// that or while waiting out a silent address.
const POLL_STARTING: Duration = Duration::from_millis(1);
const QUICK_FOR: Duration = Duration::from_secs(2);
const POLL_SLOW: Duration = Duration::from_millis(50);

/// Why a postmaster does not serve its clients.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotServing {
    /// It exited before it served.
    #[error("postgres exited before it accepted connections")]
    Exited,
    /// No address answered before the deadline.
    #[error("postgres did not accept a connection within {}s: {last}", after.as_secs())]
    NotReady { after: Duration, last: String },
    /// Another process listens on the instance's port.
    #[error("port {port} on {address} is taken by another process")]
    PortTaken { port: u16, address: IpAddr },
    /// It serves on other addresses, not on this one (and no other
    /// process was seen holding it).
    #[error("postgres does not answer on {address} port {port}: {last}")]
    Unreachable {
        address: IpAddr,
        port: u16,
        last: String,
    },
}

impl NotServing {
    /// The postmaster runs (or would) but clients cannot reach it: a
    /// condition to wait out with retries, not a crash.
    pub fn is_deaf(&self) -> bool {
        matches!(
            self,
            NotServing::PortTaken { .. } | NotServing::Unreachable { .. }
        )
    }
}

/// How to check one instance: its client TLS material, the addresses its
/// clients use, its port, role and database, and how long it may take to
/// start.
#[derive(Clone)]
pub struct ServingCheck {
    tls: MakeRustlsConnect,
    addresses: Vec<IpAddr>,
    port: u16,
    user: String,
    database: String,
    deadline: Duration,
}

impl std::fmt::Debug for ServingCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCheck")
            .field("addresses", &self.addresses)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl ServingCheck {
    pub fn new(
        tls: MakeRustlsConnect,
        listen_addresses: &str,
        port: u16,
        user: &str,
        database: &str,
        deadline: Duration,
    ) -> ServingCheck {
        ServingCheck {
            tls,
            addresses: client_addresses(listen_addresses),
            port,
            user: user.to_owned(),
            database: database.to_owned(),
            deadline,
        }
    }

    /// Wait until `pm` accepts a certificate-authenticated TLS connection
    /// on every client address. Fails early when it exits, or when it
    /// serves some addresses and stays silent on another (deaf).
    pub async fn wait(&self, pm: &mut Postmaster) -> Result<(), NotServing> {
        let start = Instant::now();
        let n = self.addresses.len();
        let mut served = vec![false; n];
        let mut last = vec![String::new(); n];
        let mut misses = vec![0u32; n];
        let mut first_served: Option<Instant> = None;
        loop {
            let counting = first_served.is_some();
            let mut attempts = tokio::task::JoinSet::new();
            for (i, addr) in self.addresses.iter().enumerate() {
                if served[i] {
                    continue;
                }
                let (tls, host, port) = (self.tls.clone(), addr.to_string(), self.port);
                let (user, db) = (self.user.clone(), self.database.clone());
                attempts.spawn(async move {
                    let r = pgconn::connect_tls_with(&tls, &host, port, &user, &db, ATTEMPT).await;
                    (i, r.map(drop))
                });
            }
            while let Some(done) = attempts.join_next().await {
                let Ok((i, outcome)) = done else { continue };
                match outcome {
                    Ok(()) => served[i] = true,
                    Err(e) => {
                        last[i] = e.to_string();
                        if counting {
                            misses[i] += 1;
                        }
                    }
                }
            }
            if served.iter().all(|s| *s) {
                return Ok(());
            }
            if first_served.is_none() && served.iter().any(|s| *s) {
                first_served = Some(Instant::now());
            }
            if let Some(since) = first_served {
                let silent: Vec<usize> = (0..n).filter(|i| !served[*i]).collect();
                if since.elapsed() >= DEAF_AFTER
                    && silent.iter().all(|i| misses[*i] >= DEAF_ATTEMPTS)
                {
                    let i = silent[0];
                    return Err(self
                        .taken_on(self.addresses[i], pm.pid())
                        .unwrap_or_else(|| NotServing::Unreachable {
                            address: self.addresses[i],
                            port: self.port,
                            last: std::mem::take(&mut last[i]),
                        }));
                }
            }
            if exited(pm) {
                return Err(NotServing::Exited);
            }
            if start.elapsed() > self.deadline {
                let mut reasons: Vec<String> = last.into_iter().filter(|l| !l.is_empty()).collect();
                reasons.dedup();
                return Err(NotServing::NotReady {
                    after: self.deadline,
                    last: reasons.join("; "),
                });
            }
            // Fast while a start is expected any moment, then gently.
            let quick = !counting && start.elapsed() < QUICK_FOR;
            tokio::time::sleep(if quick { POLL_STARTING } else { POLL_SLOW }).await;
        }
    }

    /// Another process listening on the port where the instance's clients
    /// connect (sockets of `ours`, the postmaster, if any, do not count).
    pub fn port_taken(&self, ours: Option<i32>) -> Option<NotServing> {
        self.addresses.iter().find_map(|a| self.taken_on(*a, ours))
    }

    fn taken_on(&self, client: IpAddr, ours: Option<i32>) -> Option<NotServing> {
        foreign_listener(self.port, client, ours).map(|address| NotServing::PortTaken {
            port: self.port,
            address,
        })
    }
}

/// Has the postmaster exited (or was there none)?
fn exited(pm: &mut Postmaster) -> bool {
    if let Postmaster::Child(c) = pm {
        if let Ok(Some(_)) = c.try_wait() {
            return true;
        }
    }
    !pm.pid().is_some_and(process::alive)
}

/// Can this host use IPv6 loopback?
fn has_ipv6() -> bool {
    static V6: OnceLock<bool> = OnceLock::new();
    *V6.get_or_init(|| std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok())
}

/// The addresses a client on this host reaches a postmaster on, given its
/// `listen_addresses`: `*` and `localhost` are IPv4 and IPv6 loopback
/// (IPv6 only when the host has it), `0.0.0.0` and `::` their family's
/// loopback, an address itself, a host name what it resolves to. An empty
/// setting (no TCP) is checked on IPv4 loopback, where it then fails.
pub fn client_addresses(listen_addresses: &str) -> Vec<IpAddr> {
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let mut out: Vec<IpAddr> = Vec::new();
    for item in listen_addresses.split(',').map(str::trim) {
        let found: Vec<IpAddr> = match item {
            "" => continue,
            "*" | "localhost" => vec![v4, v6],
            "0.0.0.0" => vec![v4],
            "::" => vec![v6],
            other => match other.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => (other, 0)
                    .to_socket_addrs()
                    .map(|a| a.map(|s| s.ip()).collect())
                    .unwrap_or_default(),
            },
        };
        for ip in found {
            if (ip.is_ipv4() || has_ipv6()) && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    if out.is_empty() {
        out.push(v4);
    }
    out
}

/// A socket listening on `port` that takes `client`'s connections (same
/// family, same or wildcard address) and that `ours` does not hold: its
/// address.
pub fn foreign_listener(port: u16, client: IpAddr, ours: Option<i32>) -> Option<IpAddr> {
    let ours: HashSet<u64> = ours.map(socket_inodes).unwrap_or_default();
    listeners(port)
        .into_iter()
        .find(|(addr, inode)| {
            !ours.contains(inode)
                && addr.is_ipv4() == client.is_ipv4()
                && (addr.is_unspecified() || *addr == client)
        })
        .map(|(addr, _)| addr)
}

/// Listening TCP sockets on `port` (this network namespace): address and
/// socket inode.
fn listeners(port: u16) -> Vec<(IpAddr, u64)> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when
        // retrnsmt uid timeout inode ...
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((addr, p)) = f[1].split_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16) != Ok(port) {
                continue;
            }
            if let (Some(ip), Ok(inode)) = (parse_proc_addr(addr), f[9].parse::<u64>()) {
                out.push((ip.to_canonical(), inode));
            }
        }
    }
    out
}

/// An address as `/proc/net/tcp{,6}` prints it: 32-bit words in hex, each
/// in the host's byte order.
fn parse_proc_addr(hex: &str) -> Option<IpAddr> {
    if !hex.len().is_multiple_of(8) || !hex.is_ascii() {
        return None;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for i in (0..hex.len()).step_by(8) {
        let word = u32::from_str_radix(&hex[i..i + 8], 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// The socket inodes process `pid` holds open.
fn socket_inodes(pid: i32) -> HashSet<u64> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let s = link.to_str()?;
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn reads_proc_net_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F"),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(
            parse_proc_addr("00000000"),
            Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000"),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(parse_proc_addr("0100007"), None);
        assert_eq!(parse_proc_addr("zz00007F"), None);
    }

    #[test]
    fn client_addresses_follow_listen_addresses() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        let both = if has_ipv6() { vec![v4, v6] } else { vec![v4] };
        assert_eq!(client_addresses("*"), both);
        assert_eq!(client_addresses("0.0.0.0"), vec![v4]);
        assert_eq!(client_addresses(""), vec![v4]);
        assert_eq!(
            client_addresses(" 192.0.2.7 , 0.0.0.0"),
            vec!["192.0.2.7".parse::<IpAddr>().unwrap(), v4]
        );
    }

    #[test]
    fn finds_who_holds_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(foreign_listener(port, v4, None), Some(v4));
        // Held by the process named as ours: not foreign.
        assert_eq!(
            foreign_listener(port, v4, Some(std::process::id() as i32)),
            None
        );
        // Another family, or another address, is not taken.
        assert_eq!(foreign_listener(port, "::1".parse().unwrap(), None), None);
        assert_eq!(
            foreign_listener(port, "127.0.0.2".parse().unwrap(), None),
            None
        );
        drop(l);
        assert_eq!(foreign_listener(port, v4, None), None);
    }
}
