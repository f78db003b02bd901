//! The value types the configuration file is written in: sizes (`20G`),
//! durations (`30s`), free-space floors (`5%` or a size) and address
//! ranges (`10.0.0.0/8`), with their parsers, limits and serde readers.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// An address range such as `10.0.0.0/8` or `fd00::/8` (a bare address
/// is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an address range like 10.0.0.0/8");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }
}

/// A size in bytes, written as `20G`, `512MiB`, `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 20G or 512MiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => return Err(format!("unknown size unit `{other}` (use K, M, G or T)")),
        };
        let bytes = num * mult as f64;
        if !bytes.is_finite() || bytes > MAX_SIZE as f64 {
            return Err(format!("`{s}` is too large (at most 1048576T, 1 EiB)"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n > MAX_SIZE => Err(serde::de::Error::custom(format!(
                "{n} is too large (at most 1048576T, 1 EiB)"
            ))),
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The longest duration anything accepts (100 years): a lifetime, an
/// extension or an interval beyond it is a typo or an attack, and every
/// time computed from it stays far inside what dates and clocks can hold.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// The largest size anything accepts (1 EiB).
pub const MAX_SIZE: u64 = 1 << 60;

/// Parse a duration written as `500ms`, `30s`, `10m`, `26h`, `7d`; refused
/// beyond [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let too_long = || format!("`{s}` is too long (at most 36500d, 100 years)");
    let num: u64 = match num.parse() {
        Ok(n) => n,
        // All digits but more than a u64 holds.
        Err(_) if !num.is_empty() => return Err(too_long()),
        Err(_) => return Err(format!("`{s}` is not a duration like 30s, 10m or 26h")),
    };
    let secs = |m: u64| num.checked_mul(m).map(Duration::from_secs);
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(num)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m, h or d)"
            ))
        }
    };
    match d {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(too_long()),
    }
}

pub(super) fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse::<Cidr>().map_err(serde::de::Error::custom))
        .collect()
}

pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A free-space floor: a share of the file system or an absolute size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeSpace {
    Percent(f64),
    Bytes(u64),
}

impl FreeSpace {
    /// The floor in bytes for a file system of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            FreeSpace::Percent(p) => (total as f64 * p / 100.0) as u64,
            FreeSpace::Bytes(b) => b,
        }
    }
}

impl std::fmt::Display for FreeSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreeSpace::Percent(p) => write!(f, "{p}%"),
            FreeSpace::Bytes(b) => write!(f, "{b} bytes"),
        }
    }
}

impl<'de> Deserialize<'de> for FreeSpace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(p) = s.trim().strip_suffix('%') {
            return p
                .trim()
                .parse::<f64>()
                .map(FreeSpace::Percent)
                .map_err(|_| {
                    serde::de::Error::custom(format!("`{s}` is not a percentage like 5%"))
                });
        }
        s.parse::<ByteSize>()
            .map(|b| FreeSpace::Bytes(b.0))
            .map_err(serde::de::Error::custom)
    }
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}
