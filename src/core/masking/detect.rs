//! Value detectors: pure functions that say whether one text value looks
//! like personal data (an e-mail address, a phone number, a payment card
//! number with a valid Luhn digit, an IBAN with a valid mod-97 check, an
//! IP address, a person's name), and [`classify`], which says what a
//! column's sample mostly holds. Used by `suggest-rules` ([`super::suggest`])
//! to guess transformers and by the leak scan ([`super::scan`]), which
//! also asks [`looks_personal`] to tell this project's own masked outputs
//! (`@example.invalid` addresses, names from the `name` lists) from
//! values that still look personal.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::rules::TableName;
use super::transform::{FIRST_NAMES as MASK_FIRST, LAST_NAMES as MASK_LAST};

/// What a value looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Detector {
    Email,
    Phone,
    Card,
    Iban,
    IpAddress,
    PersonName,
}

impl Detector {
    /// Every detector.
    #[cfg(any(test, feature = "test-support"))]
    pub const ALL: [Detector; 6] = [
        Detector::Email,
        Detector::Phone,
        Detector::Card,
        Detector::Iban,
        Detector::IpAddress,
        Detector::PersonName,
    ];

    /// One word for reports and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::Card => "card",
            Detector::Iban => "iban",
            Detector::IpAddress => "ip",
            Detector::PersonName => "name",
        }
    }

    /// What matching values are, in the plural, for sentences.
    pub fn plural(&self) -> &'static str {
        match self {
            Detector::Email => "e-mail addresses",
            Detector::Phone => "phone numbers",
            Detector::Card => "payment card numbers",
            Detector::Iban => "IBANs",
            Detector::IpAddress => "IP addresses",
            Detector::PersonName => "person names",
        }
    }

    /// One matching value, for sentences.
    pub fn singular(&self) -> &'static str {
        match self {
            Detector::Email => "an e-mail address",
            Detector::Phone => "a phone number",
            Detector::Card => "a payment card number",
            Detector::Iban => "an IBAN",
            Detector::IpAddress => "an IP address",
            Detector::PersonName => "a person's name",
        }
    }

    /// Whether a single match is telling (a random value almost never
    /// passes): e-mail addresses and IBANs. The others (a Luhn digit is
    /// right for one random number in ten) need a clear share.
    pub fn precise(&self) -> bool {
        matches!(self, Detector::Email | Detector::Iban)
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Sampled non-NULL values as text, per column of a table (a partitioned
/// table under its root's name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Samples {
    pub columns: BTreeMap<(TableName, String), Vec<String>>,
}

impl Samples {
    /// The values sampled from `column` of `table` (empty when none).
    pub fn get(&self, table: &TableName, column: &str) -> &[String] {
        self.columns
            .get(&(table.clone(), column.to_string()))
            .map_or(&[], Vec::as_slice)
    }

    pub fn insert(&mut self, table: TableName, column: String, values: Vec<String>) {
        self.columns.insert((table, column), values);
    }

    /// Only the columns `keep` says yes to (e.g. the masked ones, to keep
    /// as originals for the leak scan).
    pub fn filtered(&self, keep: impl Fn(&TableName, &str) -> bool) -> Samples {
        Samples {
            columns: self
                .columns
                .iter()
                .filter(|((t, c), _)| keep(t, c))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Number of sampled values.
    #[cfg(any(test, feature = "test-support"))]
    pub fn values(&self) -> usize {
        self.columns.values().map(Vec::len).sum()
    }
}

/// A share of a sample "clear" enough: at least 30 %.
fn clear_share(count: usize, of: usize) -> bool {
    count * 10 >= of * 3
}

/// What `value` looks like, if anything personal.
pub fn detect(value: &str) -> Option<Detector> {
    let v = value.trim();
    if v.is_empty() || v.len() > 256 {
        return None;
    }
    if is_email(v) {
        Some(Detector::Email)
    } else if is_iban(v) {
        Some(Detector::Iban)
    } else if is_card(v) {
        Some(Detector::Card)
    } else if is_ip(v) {
        Some(Detector::IpAddress)
    } else if is_phone(v) {
        Some(Detector::Phone)
    } else if is_person_name(v) {
        Some(Detector::PersonName)
    } else {
        None
    }
}

/// What `value` looks like, unless it is one of this project's own masked
/// outputs (an address at `.invalid`, a name made only from the `name`
/// transformer's lists, the unspecified or loopback address `redact`
/// writes or a server keeps).
pub fn looks_personal(value: &str) -> Option<Detector> {
    let d = detect(value)?;
    let v = value.trim();
    let own = match d {
        Detector::Email => email_address(v).is_some_and(|a| {
            a.rsplit('@')
                .next()
                .is_some_and(|d| d.to_ascii_lowercase().ends_with(".invalid"))
        }),
        Detector::PersonName => is_masked_name(v),
        Detector::IpAddress => ip_of(v).is_some_and(|ip| ip.is_unspecified() || ip.is_loopback()),
        _ => false,
    };
    (!own).then_some(d)
}

/// The detector matching a clear share of a column's sample (at least
/// 30 % of its non-empty values, and at least 2), with how many matched.
pub fn classify(values: &[String]) -> Option<(Detector, usize)> {
    tally(values, detect)
}

/// Like [`classify`], by any detector function.
pub(crate) fn tally(
    values: &[String],
    by: impl Fn(&str) -> Option<Detector>,
) -> Option<(Detector, usize)> {
    let mut counts: BTreeMap<Detector, usize> = BTreeMap::new();
    let mut non_empty = 0;
    for v in values.iter().filter(|v| !v.trim().is_empty()) {
        non_empty += 1;
        if let Some(d) = by(v) {
            *counts.entry(d).or_default() += 1;
        }
    }
    // Most matches; on a tie the first in `Detector` order.
    let (d, n) = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
    (n >= 2 && clear_share(n, non_empty)).then_some((d, n))
}

/// For the leak scan: every detector whose matches in `values` are
/// telling (any for a [`Detector::precise`] one, a clear share for the
/// others), with its count.
pub fn leaks(values: &[String]) -> Vec<(Detector, usize)> {
    let mut counts: BTreeMap<Detector, usize> = BTreeMap::new();
    let mut non_empty = 0;
    for v in values.iter().filter(|v| !v.trim().is_empty()) {
        non_empty += 1;
        if let Some(d) = looks_personal(v) {
            *counts.entry(d).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter(|(d, n)| d.precise() || clear_share(*n, non_empty))
        .collect()
}

// ---- e-mail ---------------------------------------------------------

/// The address in `v`: `v` itself, or the `<...>` of `Name <address>`.
fn email_address(v: &str) -> Option<&str> {
    if let (Some(open), true) = (v.rfind('<'), v.ends_with('>')) {
        return Some(&v[open + 1..v.len() - 1]);
    }
    Some(v)
}

fn is_email(v: &str) -> bool {
    let Some(a) = email_address(v) else {
        return false;
    };
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(char::is_alphabetic));
    local_ok && domain_ok
}

// ---- card -----------------------------------------------------------

/// A payment card number: 13-19 digits, optionally grouped by spaces or
/// dashes, not starting with 0, not one digit repeated, valid Luhn digit.
fn is_card(v: &str) -> bool {
    if !v
        .chars()
        .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
        || v.contains("  ")
        || v.contains("--")
        || !v.starts_with(|c: char| c.is_ascii_digit())
        || !v.ends_with(|c: char| c.is_ascii_digit())
    {
        return false;
    }
    let digits: Vec<u32> = v.chars().filter_map(|c| c.to_digit(10)).collect();
    (13..=19).contains(&digits.len())
        && digits[0] != 0
        && digits.iter().any(|d| *d != digits[0])
        && luhn(&digits)
}

/// The Luhn check over all digits (the last is the check digit).
pub fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

// ---- IBAN -----------------------------------------------------------

/// IBAN length per country (ISO 13616 registry): code and length.
const IBAN_LENGTHS: &str = "\
    AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 \
    EE20 EG29 ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 \
    IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 \
    NO15 PK24 PL28 PS29 PT25 QA29 RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 ST25 SV28 TL23 TN24 \
    TR26 UA29 VA22 VG24 XK20";

/// An IBAN: a known country code, two check digits, the country's
/// length, mod-97 remainder 1; spaces between groups allowed.
fn is_iban(v: &str) -> bool {
    if v.contains("  ") {
        return false;
    }
    let s: String = v.chars().filter(|c| *c != ' ').collect();
    let b = s.as_bytes();
    if b.len() < 15
        || !b.iter().all(u8::is_ascii_alphanumeric)
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || b[4..].iter().any(u8::is_ascii_lowercase)
    {
        return false;
    }
    let len = IBAN_LENGTHS
        .split_whitespace()
        .find(|e| e.as_bytes().get(..2) == Some(&b[..2]))
        .and_then(|e| e.get(2..)?.parse::<usize>().ok());
    if len != Some(b.len()) {
        return false;
    }
    // Move the first four to the end, letters as 10..35, mod 97.
    let mut rem: u32 = 0;
    for &c in b[4..].iter().chain(&b[..4]) {
        let n = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if n >= 10 {
            (rem * 100 + n) % 97
        } else {
            (rem * 10 + n) % 97
        };
    }
    rem == 1
}

// ---- IP -------------------------------------------------------------

/// The address of `v` when all of it is one, optionally with a prefix
/// length (`inet` as text: `192.0.2.1/32`).
fn ip_of(v: &str) -> Option<IpAddr> {
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    if let Some(p) = prefix {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let n: u32 = p.parse().ok()?;
        if n > max || p.starts_with('+') {
            return None;
        }
    }
    Some(ip)
}

fn is_ip(v: &str) -> bool {
    ip_of(v).is_some()
}

// ---- phone ----------------------------------------------------------

/// A phone number: 7-15 digits (E.164's most), an optional leading `+`,
/// groups separated by single spaces, dashes, dots or slashes, at most
/// one parenthesised group. Without `+` it needs parentheses, three
/// groups, or two with a leading 0, and is not a date (`2024-01-15`, `15.01.2024`), a decimal
/// or a dotted thousands number.
fn is_phone(v: &str) -> bool {
    let (plus, rest) = match v.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, v),
    };
    if rest.is_empty() || !rest.starts_with(|c: char| c.is_ascii_digit() || c == '(') {
        return false;
    }
    let opens = rest.matches('(').count();
    let closes = rest.matches(')').count();
    if opens > 1 || opens != closes {
        return false;
    }
    if opens == 1 {
        let (o, c) = (rest.find('('), rest.find(')'));
        match (o, c) {
            (Some(o), Some(c)) if o < c => {
                let inner = &rest[o + 1..c];
                if inner.is_empty() || !inner.chars().all(|ch| ch.is_ascii_digit()) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    let flat: String = rest.chars().filter(|c| *c != '(' && *c != ')').collect();
    let mut groups: Vec<&str> = Vec::new();
    let mut seps: Vec<char> = Vec::new();
    let mut start = 0;
    for (i, c) in flat.char_indices() {
        if c.is_ascii_digit() {
            continue;
        }
        if !" -./".contains(c) || i == start {
            return false;
        }
        groups.push(&flat[start..i]);
        seps.push(c);
        start = i + c.len_utf8();
    }
    if start >= flat.len() {
        return false;
    }
    groups.push(&flat[start..]);
    let digits: usize = groups.iter().map(|g| g.len()).sum();
    if !(7..=15).contains(&digits) {
        return false;
    }
    if plus {
        return true;
    }
    // Two bare groups are a national number only with its trunk 0
    // (`030 1234567`); `12345-6789` is a ZIP+4, `2024-000123` a reference.
    if opens == 0 && (groups.len() < 2 || (groups.len() == 2 && !groups[0].starts_with('0'))) {
        return false;
    }
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let date = lens.len() == 3
        && ((lens[0] == 4 && lens[1] <= 2 && lens[2] <= 2)
            || (lens[2] == 4 && lens[0] <= 2 && lens[1] <= 2));
    let dotted = seps.contains(&'.');
    let decimal = dotted && groups.len() < 3;
    let thousands = dotted
        && lens[0] <= 3
        && lens[1..].iter().all(|l| *l == 3)
        && seps.iter().all(|s| *s == '.');
    !(date || decimal || thousands)
}

// ---- person name ----------------------------------------------------

/// Common first names in several languages (English, German, French,
/// Spanish, Italian, Portuguese, Dutch, Nordic, Polish, Russian, Turkish,
/// Arabic, Indian, Chinese, Japanese), lower case, separated by spaces.
const FIRST_NAMES: &str = "\
    james john robert michael william david richard joseph thomas charles mary patricia \
    jennifer linda elizabeth barbara susan jessica sarah karen emma olivia sophia emily hannah \
    anna laura lisa julia peter paul mark daniel matthew andrew george jack harry oliver lucy \
    kate katherine catherine margaret helen alice hans klaus jürgen stefan andreas wolfgang \
    uwe sabine ursula monika petra katrin lukas jonas leon lena mia jean pierre michel \
    philippe nicolas françois marie nathalie isabelle sophie camille manon josé juan carlos \
    luis javier miguel antonio carmen lucía maría ana isabel giuseppe giovanni marco luca \
    francesco alessandro giulia francesca chiara joão pedro rui inês beatriz jan pieter daan \
    sanne anouk lars erik anders nils ingrid astrid karin sven piotr krzysztof tomasz \
    agnieszka katarzyna małgorzata ivan dmitry sergei alexei olga natalia elena tatiana mehmet \
    mustafa ahmet ayşe fatma mohammed muhammad ahmed ali omar fatima aisha layla rahul amit \
    priya ananya raj wei li jing min hiroshi takashi yuki haruto sakura ben sam alex chris \
    anne grace rose max felix noah liam lea";

/// Common surnames in the same languages, lower case, separated by spaces.
const SURNAMES: &str = "\
    smith johnson williams brown jones miller davis wilson anderson taylor thomas moore \
    jackson martin lee thompson white harris clark lewis walker hall young king wright scott \
    green baker adams nelson roberts evans murphy kelly o'brien müller mueller schmidt \
    schneider fischer weber meyer wagner becker schulz hoffmann koch richter klein wolf \
    bernard dubois durand lefebvre leroy moreau laurent simon michel garcía garcia fernández \
    fernandez gonzález gonzalez rodríguez rodriguez lópez lopez martínez martinez sánchez \
    sanchez pérez perez rossi russo ferrari esposito bianchi romano colombo ricci silva santos \
    ferreira pereira oliveira costa jansen bakker visser hansen johansen nielsen jensen \
    andersson johansson karlsson nilsson larsen nowak kowalski wiśniewski wójcik ivanov \
    smirnov kuznetsov popov petrov yılmaz kaya demir şahin khan hussain hassan ibrahim patel \
    sharma singh kumar gupta wang zhang chen liu yang huang zhao wu zhou sato suzuki takahashi \
    tanaka watanabe ito yamamoto nakamura kim park choi nguyen tran";

/// Capitalised words that are not names: days, months, places, firms.
const NOT_NAMES: &str = "\
    monday tuesday wednesday thursday friday saturday sunday january february march april june \
    july august september october november december meeting street road avenue lane square inc \
    ltd llc gmbh corp co company bank hotel university school city team group report project \
    the and of new north south east west period garden day service support sales office \
    account order invoice test user admin customer client manager department";

/// Lower-case particles allowed inside a name.
const PARTICLES: &str = "\
    van von de der den da di du del della la le dos das bin al ter ten y";

/// Whether `word` is one of the space-separated words of `list`.
fn listed(list: &str, word: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

/// A capitalised word of a name: `Smith`, `McDonald`, `O'Brien`,
/// `Jean-Luc`, `SMITH`, or an initial `J.`.
fn capitalised(w: &str) -> bool {
    let mut chars = w.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    if !first.is_uppercase() {
        return false;
    }
    let rest: Vec<char> = chars.collect();
    if rest == ['.'] {
        return true;
    }
    !rest.is_empty()
        && rest
            .iter()
            .all(|c| c.is_alphabetic() || *c == '-' || *c == '\'')
        && rest.last().is_some_and(|c| c.is_alphabetic())
}

/// A person's name: 2-4 capitalised words (particles aside), one of them a
/// known first name or surname, none a word that is not a name.
fn is_person_name(v: &str) -> bool {
    let words: Vec<&str> = v
        .split_whitespace()
        .map(|w| w.trim_end_matches(','))
        .collect();
    let caps = words
        .iter()
        .filter(|w| !listed(PARTICLES, &w.to_lowercase()))
        .count();
    if !(2..=4).contains(&caps) || words.len() > 5 {
        return false;
    }
    let mut known = false;
    for (i, w) in words.iter().enumerate() {
        let lower = w.to_lowercase();
        if listed(NOT_NAMES, &lower) {
            return false;
        }
        if listed(PARTICLES, &lower) && i > 0 && i + 1 < words.len() {
            continue;
        }
        if !capitalised(w) {
            return false;
        }
        // `Jean-Luc`: either part may be the known one.
        known |= lower.trim_end_matches('.').split('-').any(|bare| {
            listed(FIRST_NAMES, bare)
                || listed(SURNAMES, bare)
                || MASK_FIRST.iter().any(|n| n.eq_ignore_ascii_case(bare))
                || MASK_LAST.iter().any(|n| n.eq_ignore_ascii_case(bare))
        });
    }
    known
}

/// A value the `name` transformer writes: a first name from its list, a
/// space and a last name from its list (or the start of one, when the
/// column's length cut it).
fn is_masked_name(v: &str) -> bool {
    let Some((first, last)) = v.split_once(' ') else {
        return false;
    };
    MASK_FIRST.contains(&first) && !last.is_empty() && MASK_LAST.iter().any(|l| l.starts_with(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: &str) -> Option<Detector> {
        detect(v)
    }

    #[test]
    fn emails() {
        for v in [
            "alice@example.com",
            "Bob.Smith+tag@mail.co.uk",
            " carol_1@sub.domain.org ",
            "Alice Smith <alice@corp.example>",
            "o'neil@bücher.de",
        ] {
            assert_eq!(d(v), Some(Detector::Email), "{v}");
        }
        for v in [
            "alice@",
            "@example.com",
            "alice@localhost",
            "alice@@example.com",
            "alice@example.c0m",
            "a..b@example.com",
            ".a@example.com",
            "alice at example.com",
            "alice@-x.com",
            "see alice@example.com",
        ] {
            assert_ne!(d(v), Some(Detector::Email), "{v}");
        }
    }

    #[test]
    fn cards_need_a_luhn_digit() {
        for v in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "378282246310005",
            "5555555555554444",
            "6011000990139424",
        ] {
            assert_eq!(d(v), Some(Detector::Card), "{v}");
        }
        for v in [
            "4111111111111112",
            "4111 1111 1111 1113",
            "0000000000000000",
            "0111111111111111",
            "411111111111",
            "41111111111111111111",
            "4111  1111 1111 1111",
            "4111/1111/1111/1111",
        ] {
            assert_ne!(d(v), Some(Detector::Card), "{v}");
        }
    }

    #[test]
    fn ibans_need_country_length_and_mod_97() {
        for v in [
            "GB82 WEST 1234 5698 7654 32",
            "GB82WEST12345698765432",
            "DE89 3704 0044 0532 0130 00",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "NO9386011117947",
        ] {
            assert_eq!(d(v), Some(Detector::Iban), "{v}");
        }
        for v in [
            "GB83 WEST 1234 5698 7654 32",
            "GB82 WEST 1234 5698 7654 3",
            "ZZ82WEST12345698765432",
            "gb82west12345698765432",
            "DE89370400440532013000X",
        ] {
            assert_ne!(d(v), Some(Detector::Iban), "{v}");
        }
    }

    #[test]
    fn ip_addresses_only_as_the_whole_value() {
        for v in [
            "192.168.1.20",
            "10.0.0.1/32",
            "2001:db8::1",
            "::1",
            "fe80::1/64",
            "1.2.3.4",
        ] {
            assert_eq!(d(v), Some(Detector::IpAddress), "{v}");
        }
        for v in [
            "version 1.2.3.4",
            "v1.2.3.4",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3",
            "10.0.0.1/33",
            "1.2.3.4 and more",
        ] {
            assert_ne!(d(v), Some(Detector::IpAddress), "{v}");
        }
    }

    #[test]
    fn phones_international_and_national() {
        for v in [
            "+44 20 7946 0018",
            "+442079460018",
            "+1 (555) 123-4567",
            "(555) 123-4567",
            "555-123-4567",
            "020 7946 0018",
            "030/1234567",
            "06.12.34.56.78",
            "+49-30-1234567",
        ] {
            assert_eq!(d(v), Some(Detector::Phone), "{v}");
        }
        for v in [
            "12345678",
            "2024-01-15",
            "15.01.2024",
            "01/15/2024",
            "3.14159265",
            "1.234.567",
            "+44 20",
            "123-45",
            "+1 555 123 4567 8901 2345",
            "12:30:45",
            "555--1234567",
            "phone 555-123-4567",
            "(555 123-4567",
            "12345-6789",
            "2024-000123",
            "1234 5678",
        ] {
            assert_ne!(d(v), Some(Detector::Phone), "{v}");
        }
    }

    #[test]
    fn names_need_a_known_word_and_capitals() {
        for v in [
            "John Smith",
            "María García López",
            "Jean-Luc Picard",
            "Daan van Dijk",
            "Smith, John",
            "JOHN SMITH",
            "Zyxqu Nakamura",
            "Hiroshi Q. Watanabe",
            "Seán O'Brien",
        ] {
            assert_eq!(d(v), Some(Detector::PersonName), "{v}");
        }
        for v in [
            "Monday Meeting",
            "Smith",
            "john smith",
            "Zyxqu Blorp",
            "New York",
            "John Smith Street",
            "John Smith and Sons Ltd Corp",
            "Paul 2nd",
            "Acme Sales Team",
        ] {
            assert_ne!(d(v), Some(Detector::PersonName), "{v}");
        }
    }

    #[test]
    fn nothing_in_ordinary_values() {
        for v in [
            "",
            "  ",
            "hello",
            "42",
            "true",
            "2024-01-15 10:30:00+00",
            "{\"a\": 1}",
            "a3f5c0d1e2b4a6f8",
            "redacted",
        ] {
            assert_eq!(d(v), None, "{v}");
        }
    }

    #[test]
    fn own_masked_outputs_do_not_look_personal() {
        assert_eq!(
            detect("user-0123456789abcdef@example.invalid"),
            Some(Detector::Email)
        );
        assert_eq!(
            looks_personal("user-0123456789abcdef@example.invalid"),
            None
        );
        assert_eq!(looks_personal("x@corp.example"), Some(Detector::Email));
        for first in MASK_FIRST {
            for last in MASK_LAST {
                assert_eq!(looks_personal(&format!("{first} {last}")), None);
            }
        }
        // Cut to a varchar(7).
        assert_eq!(looks_personal("Ada Abb"), None);
        assert_eq!(looks_personal("John Smith"), Some(Detector::PersonName));
        assert_eq!(looks_personal("0.0.0.0"), None, "redact on inet");
        assert_eq!(looks_personal("0.0.0.0/32"), None);
        assert_eq!(looks_personal("127.0.0.1"), None);
        assert_eq!(looks_personal("192.0.2.7"), Some(Detector::IpAddress));
    }

    #[test]
    fn classify_needs_a_clear_share_and_two() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mostly = s(&[
            "a@x.com", "b@y.org", "c@z.net", "", "nope", "no", "n", "x", "y", "z",
        ]);
        assert_eq!(classify(&mostly), Some((Detector::Email, 3)));
        assert_eq!(classify(&s(&["a@x.com"])), None, "one is not enough");
        assert_eq!(
            classify(&s(&["a@x.com", "b", "c", "d", "e", "f", "g"])),
            None
        );
        assert_eq!(
            classify(&s(&["a@x.com", "b@x.com", "c", "d", "e", "f"])),
            Some((Detector::Email, 2))
        );
        assert_eq!(classify(&[]), None);
        // Random 16-digit numbers: about one in ten passes Luhn: no card.
        let ids: Vec<String> = (0..100u64)
            .map(|i| format!("{}", 4_000_000_000_000_000 + i * 7_919))
            .collect();
        assert_eq!(classify(&ids), None);
    }

    #[test]
    fn leaks_report_precise_detectors_on_one_match() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let one_email = s(&["a@x.com", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
        assert_eq!(leaks(&one_email), vec![(Detector::Email, 1)]);
        let one_phone = s(&["+44 20 7946 0018", "b", "c", "d", "e"]);
        assert_eq!(leaks(&one_phone), vec![]);
        let masked = s(&[
            "user-00@example.invalid",
            "Ada Abbott",
            "Zoe Zimmer",
            "0.0.0.0",
        ]);
        assert_eq!(leaks(&masked), vec![]);
    }

    #[test]
    fn luhn_digit() {
        assert!(luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
        assert!(!luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 4]));
    }
}
