//! The `DRAUPNIR-WHITELIST` chain, through the `iptables` crate.
//!
//! Owns: creating the chain when it is missing (never touching any other
//! chain), and making its rules equal to a desired set exactly: one
//! `-s ADDR -p tcp --dport PORT -j ACCEPT` per allowed address and instance
//! port, IPv4 through `iptables` and IPv6 through `ip6tables`. Anything
//! else found in the chain is removed. Blocking: call it off the async
//! runtime (the crate's errors are not `Send`).

use std::collections::BTreeSet;
use std::net::IpAddr;

/// The chain Draupnir owns.
pub const CHAIN: &str = "DRAUPNIR-WHITELIST";
const TABLE: &str = "filter";

/// One allowed source for one instance port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub port: u16,
    pub source: IpAddr,
}

impl Rule {
    /// The rule as `iptables -S` prints it, without `-A CHAIN`.
    pub fn spec(&self) -> String {
        let prefix = if self.source.is_ipv4() { 32 } else { 128 };
        format!(
            "-s {}/{prefix} -p tcp -m tcp --dport {} -j ACCEPT",
            self.source, self.port
        )
    }
}

/// Parse one of our own rules from `iptables -S` output.
pub fn parse_rule(line: &str) -> Option<Rule> {
    let rest = line.strip_prefix(&format!("-A {CHAIN} "))?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        ["-s", src, "-p", "tcp", "-m", "tcp", "--dport", port, "-j", "ACCEPT"] => {
            let (addr, prefix) = src.split_once('/')?;
            let source: IpAddr = addr.parse().ok()?;
            let full = if source.is_ipv4() { "32" } else { "128" };
            (prefix == full).then_some(())?;
            Some(Rule {
                port: port.parse().ok()?,
                source,
            })
        }
        _ => None,
    }
}

/// What one reconcile changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{family}: {message}")]
pub struct GuardError {
    pub family: &'static str,
    pub message: String,
}

fn err(family: &'static str) -> impl Fn(Box<dyn std::error::Error>) -> GuardError {
    move |e| GuardError {
        family,
        message: e.to_string().trim().replace('\n', " "),
    }
}

/// Make the chain hold exactly `desired`, for both address families.
/// With `dry_run`, only report what would change.
pub fn reconcile(desired: &BTreeSet<Rule>, dry_run: bool) -> Result<Changes, GuardError> {
    let mut changes = Changes::default();
    for v6 in [false, true] {
        let family = if v6 { "ip6tables" } else { "iptables" };
        let want: BTreeSet<Rule> = desired
            .iter()
            .filter(|r| r.source.is_ipv6() == v6)
            .copied()
            .collect();
        let ipt = match iptables::new(v6) {
            Ok(i) => i,
            // No ip6tables on this host and nothing to put there: fine.
            Err(_) if v6 && want.is_empty() => continue,
            Err(e) => return Err(err(family)(e)),
        };
        if !ipt.chain_exists(TABLE, CHAIN).map_err(err(family))? {
            if dry_run {
                changes.added.push(format!("{family} -N {CHAIN}"));
            } else {
                ipt.new_chain(TABLE, CHAIN).map_err(err(family))?;
            }
        }
        let current = if ipt.chain_exists(TABLE, CHAIN).map_err(err(family))? {
            ipt.list(TABLE, CHAIN).map_err(err(family))?
        } else {
            Vec::new()
        };
        let mut have = BTreeSet::new();
        for line in current.iter().filter(|l| l.starts_with("-A ")) {
            match parse_rule(line) {
                Some(rule) if want.contains(&rule) && have.insert(rule) => {}
                _ => {
                    // Foreign, stale or duplicate: remove it.
                    let spec = line.trim_start_matches(&format!("-A {CHAIN} ")).to_string();
                    if !dry_run {
                        ipt.delete(TABLE, CHAIN, &spec).map_err(err(family))?;
                    }
                    changes.removed.push(format!("{family} {spec}"));
                }
            }
        }
        for rule in want.difference(&have) {
            if !dry_run {
                ipt.append(TABLE, CHAIN, &rule.spec())
                    .map_err(err(family))?;
            }
            changes.added.push(format!("{family} {}", rule.spec()));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip() {
        for r in [
            Rule {
                port: 6432,
                source: "192.0.2.7".parse().unwrap(),
            },
            Rule {
                port: 7000,
                source: "2001:db8::1".parse().unwrap(),
            },
        ] {
            assert_eq!(parse_rule(&format!("-A {CHAIN} {}", r.spec())), Some(r));
        }
        assert_eq!(
            parse_rule("-A DRAUPNIR-WHITELIST -s 10.0.0.0/8 -p tcp -m tcp --dport 1 -j ACCEPT"),
            None
        );
        assert_eq!(parse_rule("-A DRAUPNIR-WHITELIST -j DROP"), None);
        assert_eq!(
            parse_rule("-A INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 6432 -j ACCEPT"),
            None
        );
    }
}
