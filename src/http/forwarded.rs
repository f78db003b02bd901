//! Which address a request comes from, for the allow-list: the peer, or —
//! only when `use_x_forwarded_for` is on and the peer is a trusted proxy —
//! the rightmost `X-Forwarded-For` entry that is not itself a trusted
//! proxy. Junk in the header is ignored (the peer is used).

use std::net::IpAddr;

use crate::config::Cidr;

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Parse one `X-Forwarded-For` entry: `a.b.c.d`, `a.b.c.d:port`, an IPv6
/// address, or `[v6]:port`.
fn parse_entry(e: &str) -> Option<IpAddr> {
    let e = e.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    None
}

/// The client address of a request from `peer` carrying these
/// `X-Forwarded-For` header values.
pub fn client_address(
    peer: Option<IpAddr>,
    xff: &[&str],
    use_xff: bool,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = canonical(peer?);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !use_xff || !is_trusted(peer) {
        return Some(peer);
    }
    let entries: Vec<&str> = xff.iter().flat_map(|v| v.split(',')).collect();
    for e in entries.iter().rev() {
        let Some(ip) = parse_entry(e).map(canonical) else {
            return Some(peer);
        };
        if is_trusted(ip) {
            continue;
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Some(peer);
        }
        return Some(ip);
    }
    Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn honours_only_trusted_proxies() {
        let trusted: Vec<Cidr> = ["10.0.0.0/8", "fd00::/8"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        // Off: always the peer.
        assert_eq!(
            client_address(ip("10.1.1.1"), &["198.51.100.7"], false, &trusted),
            ip("10.1.1.1")
        );
        // From a trusted proxy: the rightmost untrusted entry.
        assert_eq!(
            client_address(
                ip("10.1.1.1"),
                &["203.0.113.5, 198.51.100.7, 10.2.2.2"],
                true,
                &trusted
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(
                ip("10.1.1.1"),
                &["1.2.3.4", "198.51.100.7:443"],
                true,
                &trusted
            ),
            ip("198.51.100.7")
        );
        // A spoofed header from an untrusted peer is ignored.
        assert_eq!(
            client_address(ip("192.0.2.9"), &["198.51.100.7"], true, &trusted),
            ip("192.0.2.9")
        );
        // Junk is ignored.
        assert_eq!(
            client_address(ip("10.1.1.1"), &["not-an-ip"], true, &trusted),
            ip("10.1.1.1")
        );
        assert_eq!(
            client_address(ip("10.1.1.1"), &["0.0.0.0"], true, &trusted),
            ip("10.1.1.1")
        );
        // Only proxies: the peer.
        assert_eq!(
            client_address(ip("10.1.1.1"), &["10.3.3.3"], true, &trusted),
            ip("10.1.1.1")
        );
        // v4-mapped peers count as IPv4.
        assert_eq!(
            client_address(ip("::ffff:10.1.1.1"), &["[2001:db8::1]:80"], true, &trusted),
            ip("2001:db8::1")
        );
    }
}
