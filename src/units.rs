//! Human-friendly sizes and durations, as written in configs and on the CLI.
//!
//! Sizes are held as MiB (`u64`), like every `*_mb` field of [`crate::model`].
//! They are written `"8GiB"`, `"512MiB"`, `"1.5GiB"`, `"1TiB"` (binary,
//! powers of 1024) or `"100GB"`, `"2048MB"` (decimal, powers of 1000); a bare
//! number is MiB. Durations are written `"30s"`, `"5m"`, `"250ms"`,
//! `"1h30m"`, `"2d"`; a bare number is seconds.
//!
//! Parsing is exact: numbers are handled as integers and decimal fractions,
//! never as floats, so `"0.1GiB"` is 102 MiB (rounded down) on every machine,
//! and [`format_mb`] / [`format_duration`] produce text that parses back to
//! the same value.
//!
//! The `serde_*` modules plug these formats into serde with
//! `#[serde(with = "crate::units::serde_size")]`. They accept a string or a
//! plain integer, and write a string. They use `deserialize_any`, so they
//! suit self-describing formats (TOML, JSON), not postcard.

use std::fmt::Write as _;
use std::time::Duration;

/// Why a size or duration could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a size.
    #[error("invalid size {input:?}: {reason}")]
    Size {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not a duration.
    #[error("invalid duration {input:?}: {reason}")]
    Duration {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

const MIB: u128 = 1 << 20;

/// Size units: the spellings accepted and the number of bytes each stands
/// for. Matching ignores case.
const SIZE_UNITS: &[(&[&str], u128)] = &[
    (&["b", "byte", "bytes"], 1),
    (&["kib", "ki"], 1 << 10),
    (&["mib", "mi"], 1 << 20),
    (&["gib", "gi"], 1 << 30),
    (&["tib", "ti"], 1 << 40),
    (&["pib", "pi"], 1 << 50),
    (&["kb"], 1_000),
    (&["mb"], 1_000_000),
    (&["gb"], 1_000_000_000),
    (&["tb"], 1_000_000_000_000),
    (&["pb"], 1_000_000_000_000_000),
];

const SIZE_UNITS_HELP: &str =
    "expected a number followed by B, KiB, MiB, GiB, TiB, PiB, KB, MB, GB, TB or PB, e.g. \"12GiB\"; a bare number is MiB";

/// A non-negative decimal number, split so it can be scaled exactly:
/// the value is `mantissa / 10^scale`.
struct Decimal {
    mantissa: u128,
    scale: u32,
}

/// Most fractional digits accepted; keeps the integer arithmetic in range.
const MAX_FRACTION_DIGITS: u32 = 18;

/// Splits `s` into a leading decimal number and the rest (trimmed).
fn split_number(s: &str) -> Result<(Decimal, &str), String> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(end);
    let num: String = num.chars().filter(|c| *c != '_').collect();
    if num.is_empty() {
        return Err(if s.starts_with('-') {
            "negative values are not allowed".to_owned()
        } else {
            "missing number".to_owned()
        });
    }
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num.as_str(), ""),
    };
    if frac.contains('.') {
        return Err(format!("malformed number {num:?}"));
    }
    if int.is_empty() && frac.is_empty() {
        return Err(format!("malformed number {num:?}"));
    }
    if frac.len() as u32 > MAX_FRACTION_DIGITS {
        return Err(format!(
            "too many decimal places in {num:?} (at most {MAX_FRACTION_DIGITS})"
        ));
    }
    let digits = format!("{int}{frac}");
    let mantissa: u128 = digits
        .parse()
        .map_err(|_| format!("number {num:?} is too large"))?;
    Ok((
        Decimal {
            mantissa,
            scale: frac.len() as u32,
        },
        rest.trim_start(),
    ))
}

impl Decimal {
    /// `self * factor`, rounded down. `None` on overflow.
    fn times(&self, factor: u128) -> Option<u128> {
        let pow = 10u128.checked_pow(self.scale)?;
        // mantissa * factor may overflow for huge inputs; split to stay exact.
        let whole = self.mantissa / pow;
        let frac = self.mantissa % pow;
        let a = whole.checked_mul(factor)?;
        let b = frac.checked_mul(factor)? / pow;
        a.checked_add(b)
    }
}

/// Parses a size and returns it in MiB, rounded down.
///
/// Accepts `"8GiB"`, `"512MiB"`, `"1.5GiB"`, `"1TiB"`, `"100GB"` (decimal:
/// 1 GB = 10^9 bytes), `"2048MB"`, `"0"`, and a bare number, which is MiB.
/// Units ignore case and may be separated from the number by spaces;
/// `Ki`/`Mi`/`Gi`/`Ti` (Kubernetes style) are binary. The one-letter forms
/// `K`, `M`, `G`, `T` are refused because tools disagree on whether they
/// are binary or decimal.
pub fn parse_size_mb(s: &str) -> Result<u64, UnitError> {
    let err = |reason: String| UnitError::Size {
        input: s.to_owned(),
        reason,
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(err(format!("empty; {SIZE_UNITS_HELP}")));
    }
    let (num, unit) = split_number(t).map_err(|r| err(format!("{r}; {SIZE_UNITS_HELP}")))?;
    let factor = if unit.is_empty() {
        MIB
    } else {
        let lower = unit.to_ascii_lowercase();
        match SIZE_UNITS
            .iter()
            .find(|(names, _)| names.contains(&lower.as_str()))
        {
            Some((_, f)) => *f,
            None if matches!(lower.as_str(), "k" | "m" | "g" | "t" | "p") => {
                let up = unit.to_ascii_uppercase();
                return Err(err(format!(
                    "ambiguous unit {unit:?}: write \"{up}iB\" (powers of 1024) or \"{up}B\" (powers of 1000)"
                )));
            }
            None => {
                return Err(err(format!("unknown unit {unit:?}; {SIZE_UNITS_HELP}")));
            }
        }
    };
    let bytes = num
        .times(factor)
        .ok_or_else(|| err("too large".to_owned()))?;
    u64::try_from(bytes / MIB).map_err(|_| err("too large".to_owned()))
}

/// Writes `num / den` as a decimal. Exact: callers only pass powers of two
/// as `den`, whose fractions always terminate.
fn write_ratio(out: &mut String, num: u64, den: u64) {
    let _ = write!(out, "{}", num / den);
    let mut rem = (num % den) as u128;
    if rem == 0 {
        return;
    }
    out.push('.');
    let den = den as u128;
    while rem != 0 {
        rem *= 10;
        out.push(char::from(b'0' + (rem / den) as u8));
        rem %= den;
    }
}

/// Formats MiB exactly and as briefly as possible: `8192` → `"8GiB"`,
/// `512` → `"512MiB"`, `1536` → `"1.5GiB"`, `0` → `"0MiB"`.
///
/// Of the binary units MiB, GiB, TiB and PiB it picks the shortest exact
/// spelling, preferring the larger unit on a tie. [`parse_size_mb`] reads
/// the result back to the same value.
pub fn format_mb(mb: u64) -> String {
    let mut best = format!("{mb}MiB");
    for (unit, den) in [("GiB", 1u64 << 10), ("TiB", 1 << 20), ("PiB", 1 << 30)] {
        if mb < den {
            // Below one of this unit ("0.5GiB"): MiB reads better.
            break;
        }
        let mut s = String::new();
        write_ratio(&mut s, mb, den);
        s.push_str(unit);
        if s.len() <= best.len() {
            best = s;
        }
    }
    best
}

/// Duration units: spellings and nanoseconds. Case matters (`m` is
/// minutes; there is no month).
const DURATION_UNITS: &[(&[&str], u128)] = &[
    (&["ns"], 1),
    (&["us", "µs"], 1_000),
    (&["ms"], 1_000_000),
    (&["s", "sec", "secs", "second", "seconds"], 1_000_000_000),
    (
        &["m", "min", "mins", "minute", "minutes"],
        60 * 1_000_000_000,
    ),
    (&["h", "hr", "hrs", "hour", "hours"], 3_600 * 1_000_000_000),
    (&["d", "day", "days"], 86_400 * 1_000_000_000),
    (&["w", "week", "weeks"], 7 * 86_400 * 1_000_000_000),
];

const DURATION_HELP: &str =
    "expected something like \"30s\", \"250ms\", \"5m\", \"1h30m\" or \"2d\" (units: ns, us, ms, s, m, h, d, w); a bare number is seconds";

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration: `"30s"`, `"5m"`, `"1h"`, `"250ms"`, `"1h30m"`,
/// `"1.5s"`, `"2d"`. Components may be separated by spaces. A bare number
/// is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = |reason: String| UnitError::Duration {
        input: s.to_owned(),
        reason,
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err(format!("empty; {DURATION_HELP}")));
    }
    let mut total: u128 = 0;
    let mut first = true;
    while !rest.is_empty() {
        let (num, after) = split_number(rest).map_err(|r| err(format!("{r}; {DURATION_HELP}")))?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_end);
        let factor = if unit.is_empty() {
            if first && tail.trim().is_empty() {
                NANOS_PER_SEC
            } else {
                return Err(err(format!("missing unit; {DURATION_HELP}")));
            }
        } else {
            match DURATION_UNITS
                .iter()
                .find(|(names, _)| names.contains(&unit))
            {
                Some((_, f)) => *f,
                None => return Err(err(format!("unknown unit {unit:?}; {DURATION_HELP}"))),
            }
        };
        let nanos = num
            .times(factor)
            .ok_or_else(|| err("too large".to_owned()))?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| err("too large".to_owned()))?;
        rest = tail.trim_start();
        first = false;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| err("too large".to_owned()))?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

/// Formats a duration as its components, largest first: `"1h30m"`,
/// `"250ms"`, `"2d"`, `"1s500ms"`, `"0s"`. [`parse_duration`] reads the
/// result back to the same value.
pub fn format_duration(d: Duration) -> String {
    let mut nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400 * NANOS_PER_SEC),
        ("h", 3_600 * NANOS_PER_SEC),
        ("m", 60 * NANOS_PER_SEC),
        ("s", NANOS_PER_SEC),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        let n = nanos / size;
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
            nanos %= size;
        }
    }
    out
}

/// Shared visitor for sizes: a string in any [`parse_size_mb`] form, or a
/// non-negative integer of MiB.
struct SizeVisitor;

impl serde::de::Visitor<'_> for SizeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a size like \"12GiB\" or a whole number of MiB")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
        parse_size_mb(v).map_err(E::custom)
    }
}

/// Shared visitor for durations: a string in any [`parse_duration`] form,
/// or a non-negative integer of seconds.
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration like \"30s\" or a whole number of seconds")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

/// Wraps a visitor so it also accepts `Option`s.
struct OptVisitor<V>(V);

impl<'de, V: serde::de::Visitor<'de>> serde::de::Visitor<'de> for OptVisitor<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self.0).map(Some)
    }
}

/// `#[serde(with = "crate::units::serde_size")]` for a `u64` of MiB:
/// reads `"8GiB"` or `8192`, writes `"8GiB"`.
pub mod serde_size {
    use serde::{Deserializer, Serializer};

    /// Writes the size with [`super::format_mb`].
    pub fn serialize<S: Serializer>(mb: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_mb(*mb))
    }

    /// Reads a size string or an integer of MiB.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(super::SizeVisitor)
    }
}

/// Like [`serde_size`], for `Option<u64>`. Pair it with
/// `#[serde(default, skip_serializing_if = "Option::is_none")]`.
pub mod serde_size_opt {
    use serde::{Deserializer, Serializer};

    /// Writes `Some` with [`super::format_mb`], `None` as none.
    pub fn serialize<S: Serializer>(mb: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match mb {
            Some(mb) => s.serialize_some(&super::format_mb(*mb)),
            None => s.serialize_none(),
        }
    }

    /// Reads a size string or an integer of MiB.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_option(super::OptVisitor(super::SizeVisitor))
    }
}

/// `#[serde(with = "crate::units::serde_duration")]` for a
/// [`Duration`]: reads `"30s"` or `30` (seconds), writes `"30s"`.
pub mod serde_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes the duration with [`super::format_duration`].
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads a duration string or an integer of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(super::DurationVisitor)
    }
}

/// Like [`serde_duration`], for `Option<Duration>`. Pair it with
/// `#[serde(default, skip_serializing_if = "Option::is_none")]`.
pub mod serde_duration_opt {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes `Some` with [`super::format_duration`], `None` as none.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads a duration string or an integer of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(super::OptVisitor(super::DurationVisitor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sizes() {
        let cases = [
            ("8GiB", 8192),
            ("512MiB", 512),
            ("1.5GiB", 1536),
            ("1TiB", 1 << 20),
            ("100GB", 95_367),
            ("2048MB", 1953),
            ("0", 0),
            ("0GiB", 0),
            ("4096", 4096),
            (" 8 gib ", 8192),
            ("8Gi", 8192),
            ("1_024MiB", 1024),
            ("0.1GiB", 102),
            ("1048576KiB", 1024),
            ("1048575B", 0),
            ("1PiB", 1 << 30),
            (".5GiB", 512),
            ("2.GiB", 2048),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size_mb(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_sizes_with_clear_errors() {
        for (text, needle) in [
            ("", "empty"),
            ("lots", "missing number"),
            ("12XB", "unknown unit \"XB\""),
            ("8G", "ambiguous unit \"G\": write \"GiB\""),
            ("-1GiB", "negative"),
            ("1.2.3GiB", "malformed"),
            ("99999999999999999999PiB", "too large"),
            (".GiB", "malformed"),
        ] {
            let e = parse_size_mb(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.starts_with("invalid size"), "{text}: {e}");
        }
    }

    #[test]
    fn formats_sizes_briefly_and_exactly() {
        for (mb, want) in [
            (0, "0MiB"),
            (1, "1MiB"),
            (512, "512MiB"),
            (1000, "1000MiB"),
            (1024, "1GiB"),
            (1536, "1.5GiB"),
            (8192, "8GiB"),
            (1025, "1025MiB"),
            (1 << 20, "1TiB"),
            (3 << 19, "1.5TiB"),
            (1 << 30, "1PiB"),
            (1 << 40, "1024PiB"),
        ] {
            assert_eq!(format_mb(mb), want, "{mb}");
        }
    }

    #[test]
    fn parses_durations() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("250ms", Duration::from_millis(250)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h 30m", Duration::from_secs(5400)),
            ("2d", Duration::from_secs(2 * 86_400)),
            ("1.5s", Duration::from_millis(1500)),
            ("10", Duration::from_secs(10)),
            ("0", Duration::ZERO),
            ("20us", Duration::from_micros(20)),
            ("7ns", Duration::from_nanos(7)),
            ("1w", Duration::from_secs(7 * 86_400)),
            ("5 minutes", Duration::from_secs(300)),
            ("1 hour 2 seconds", Duration::from_secs(3602)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_durations_with_clear_errors() {
        for (text, needle) in [
            ("", "empty"),
            ("soon", "missing number"),
            ("5x", "unknown unit \"x\""),
            ("1h30", "missing unit"),
            ("5M", "unknown unit \"M\""),
            ("-5s", "negative"),
        ] {
            let e = parse_duration(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.starts_with("invalid duration"), "{text}: {e}");
        }
    }

    #[test]
    fn formats_durations() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(2 * 86_400), "2d"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::new(1, 7), "1s7ns"),
        ] {
            assert_eq!(format_duration(d), want);
        }
    }

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct Holder {
        #[serde(with = "serde_size")]
        size: u64,
        #[serde(with = "serde_duration")]
        wait: Duration,
        #[serde(
            default,
            with = "serde_size_opt",
            skip_serializing_if = "Option::is_none"
        )]
        cap: Option<u64>,
        #[serde(
            default,
            with = "serde_duration_opt",
            skip_serializing_if = "Option::is_none"
        )]
        ttl: Option<Duration>,
    }

    #[test]
    fn serde_helpers_accept_strings_and_integers() {
        let h: Holder =
            toml::from_str("size = \"1.5GiB\"\nwait = 30\ncap = 64\nttl = \"6s\"").unwrap();
        assert_eq!(
            h,
            Holder {
                size: 1536,
                wait: Duration::from_secs(30),
                cap: Some(64),
                ttl: Some(Duration::from_secs(6)),
            }
        );
        let text = toml::to_string(&h).unwrap();
        assert!(text.contains("size = \"1.5GiB\""), "{text}");
        assert!(text.contains("wait = \"30s\""), "{text}");
        assert_eq!(toml::from_str::<Holder>(&text).unwrap(), h);

        let h: Holder = toml::from_str("size = 8\nwait = \"1h\"").unwrap();
        assert_eq!((h.cap, h.ttl), (None, None));
        let json: Holder =
            serde_json::from_str(r#"{"size":"8GiB","wait":"5m","cap":null}"#).unwrap();
        assert_eq!((json.size, json.cap), (8192, None));

        let e = toml::from_str::<Holder>("size = \"lots\"\nwait = 1").unwrap_err();
        assert!(e.message().contains("invalid size \"lots\""), "{e}");
        let e = toml::from_str::<Holder>("size = -3\nwait = 1").unwrap_err();
        assert!(e.message().contains("must not be negative"), "{e}");
        let e = toml::from_str::<Holder>("size = 1\nwait = true").unwrap_err();
        assert!(e.message().contains("a duration like"), "{e}");
    }

    proptest! {
        #[test]
        fn size_round_trips(mb in any::<u64>()) {
            prop_assert_eq!(parse_size_mb(&format_mb(mb)), Ok(mb));
        }

        #[test]
        fn small_size_round_trips(mb in 0u64..(1 << 24)) {
            prop_assert_eq!(parse_size_mb(&format_mb(mb)), Ok(mb));
        }

        #[test]
        fn duration_round_trips(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,16}") {
            let _ = parse_size_mb(&s);
            let _ = parse_duration(&s);
        }
    }
}
