//! A write-ahead log position (`pg_lsn`): PostgreSQL writes it `X/Y`, two
//! hexadecimal halves of one 64-bit byte offset.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `earlier` to here (0 when `earlier` is ahead).
    pub fn since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl FromStr for Lsn {
    type Err = ();

    fn from_str(s: &str) -> Result<Lsn, ()> {
        let (hi, lo) = s.trim().split_once('/').ok_or(())?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| ())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| ())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert!("junk".parse::<Lsn>().is_err());
        assert_eq!(Lsn(10).since(Lsn(4)), 6);
        assert_eq!(Lsn(4).since(Lsn(10)), 0);
    }
}
