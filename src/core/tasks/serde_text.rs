//! Serde helpers that are friendly in TOML and JSON and still work with
//! postcard.
//!
//! Postcard is not self-describing, so it cannot serve `deserialize_any`.
//! Each helper here checks `is_human_readable()`: TOML and JSON get the
//! lenient form (a parameter value may be a string, a number or a boolean;
//! a size may be `"64MiB"`), postcard gets the plain stored form (a
//! `String`, a `u64`). The stored form is what the lenient form turns into,
//! so a value written by one format reads back the same in the other.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// The canonical text of a scalar parameter value.
pub(crate) fn float_text(v: f64) -> String {
    // `Debug` is the shortest text that reads back to the same f64, and
    // keeps a decimal point ("2.0") or an exponent ("1e-7").
    format!("{v:?}")
}

/// Accepts a string, an integer, a float or a boolean; yields its text.
struct ScalarVisitor;

const SCALAR_EXPECTED: &str = "a string, a number or a boolean";

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SCALAR_EXPECTED)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        if v.is_finite() {
            Ok(float_text(v))
        } else {
            Err(E::custom(format!("expected a finite number, got {v}")))
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<String, A::Error> {
        // TOML dates and times arrive as maps too.
        Err(de::Error::custom(format!(
            "expected {SCALAR_EXPECTED}, got a table or a date"
        )))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<String, A::Error> {
        Err(de::Error::custom(format!(
            "expected {SCALAR_EXPECTED}, got a list"
        )))
    }
}

/// One scalar as text.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(ScalarVisitor).map(Scalar)
        } else {
            String::deserialize(d).map(Scalar)
        }
    }
}

/// `Option<String>` from an optional scalar.
pub(crate) mod scalar_opt {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Scalar>::deserialize(d)?.map(|s| s.0))
    }
}

/// `Vec<String>` from a list of scalars.
pub(crate) mod scalar_vec {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(Vec::<Scalar>::deserialize(d)?
            .into_iter()
            .map(|s| s.0)
            .collect())
    }
}

/// `BTreeMap<String, String>` from a table of scalars.
pub(crate) mod scalar_map {
    use super::*;

    pub fn serialize<S: Serializer>(v: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(v.len()))?;
        for (k, v) in v {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        Ok(BTreeMap::<String, Scalar>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect())
    }
}

/// An optional size in MiB: `"64MiB"` or an integer of MiB in TOML and
/// JSON ([`crate::units::serde_size_opt`]), a plain `Option<u64>` in
/// postcard.
pub(crate) mod size_mb_opt {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            crate::units::serde_size_opt::serialize(v, s)
        } else {
            v.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        if d.is_human_readable() {
            crate::units::serde_size_opt::deserialize(d)
        } else {
            Option::<u64>::deserialize(d)
        }
    }
}

/// A size in bytes: `"64KiB"`, `"1MiB"`, `"1000B"` or an integer of bytes
/// in TOML and JSON; a plain `u64` in postcard.
pub(crate) mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format_bytes(*v))
        } else {
            s.serialize_u64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"64KiB\" or \"1MiB\", or a whole number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom(format!("invalid size {v}: negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                parse_bytes(v).map_err(E::custom)
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            u64::deserialize(d)
        }
    }
}

/// A JSON value: itself in JSON (and TOML), its JSON text in postcard,
/// which cannot read a self-describing value back.
pub(crate) mod json_opt {
    use super::*;

    pub fn serialize<S: Serializer>(
        v: &Option<serde_json::Value>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            v.as_ref()
                .map(|v| serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned()))
                .serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<serde_json::Value>, D::Error> {
        if d.is_human_readable() {
            Option::<serde_json::Value>::deserialize(d)
        } else {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(text) => serde_json::from_str(&text)
                    .map(Some)
                    .map_err(de::Error::custom),
            }
        }
    }
}

/// Byte units: spelling (lowercase) and size.
const BYTE_UNITS: &[(&str, u128)] = &[
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
];

const BYTES_HELP: &str =
    "expected a size like \"64KiB\", \"1MiB\" or \"1000B\" (B, KiB, MiB, GiB, KB, MB, GB), or a whole number of bytes";

/// Parses a size in bytes, exactly (decimal fractions rounded down):
/// `"64KiB"`, `"1.5MiB"`, `"1000B"`, `"65536"` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid size {s:?}: {why}; {BYTES_HELP}");
    let t = s.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let num: String = num.chars().filter(|c| *c != '_').collect();
    let unit = unit.trim().to_ascii_lowercase();
    let factor = if unit.is_empty() {
        1
    } else {
        BYTE_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, f)| *f)
            .ok_or_else(|| bad(&format!("unknown unit {unit:?}")))?
    };
    let (int, frac) = num.split_once('.').unwrap_or((&num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || frac.len() > 9 {
        return Err(bad("not a number"));
    }
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad("too large"))?
    };
    let frac_val: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad("not a number"))?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let total = int
        .checked_mul(factor)
        .and_then(|w| w.checked_add(frac_val * factor / scale))
        .ok_or_else(|| bad("too large"))?;
    u64::try_from(total).map_err(|_| bad("too large"))
}

/// Formats bytes exactly: `"1MiB"`, `"64KiB"`, `"1000B"`.
pub fn format_bytes(v: u64) -> String {
    if v != 0 && v.is_multiple_of(1 << 30) {
        format!("{}GiB", v >> 30)
    } else if v != 0 && v.is_multiple_of(1 << 20) {
        format!("{}MiB", v >> 20)
    } else if v != 0 && v.is_multiple_of(1 << 10) {
        format!("{}KiB", v >> 10)
    } else {
        format!("{v}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_parse_and_format() {
        assert_eq!(parse_bytes("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("1.5 MiB"), Ok(3 << 19));
        assert_eq!(parse_bytes("1000B"), Ok(1000));
        assert_eq!(parse_bytes("2kb"), Ok(2000));
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("1_000"), Ok(1000));
        for bad in ["", "x", "1K", "1.2.3KiB", "-1", "1e3", "99999999999999GiB"] {
            let e = parse_bytes(bad).unwrap_err();
            assert!(e.contains("invalid size"), "{bad}: {e}");
        }
        for v in [0, 1, 1000, 1024, 1536, 1 << 20, 3 << 20, 1 << 30, u64::MAX] {
            assert_eq!(parse_bytes(&format_bytes(v)), Ok(v), "{v}");
        }
        assert_eq!(format_bytes(4 << 20), "4MiB");
        assert_eq!(format_bytes(0), "0B");
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        #[serde(with = "scalar_map")]
        m: BTreeMap<String, String>,
        #[serde(with = "scalar_opt", default)]
        o: Option<String>,
        #[serde(with = "size_mb_opt", default)]
        size: Option<u64>,
        #[serde(with = "bytes")]
        b: u64,
        #[serde(with = "json_opt", default)]
        j: Option<serde_json::Value>,
    }

    #[test]
    fn lenient_in_toml_and_json_plain_in_postcard() {
        let s: S = toml::from_str(
            "m = { a = 1, b = 2.5, c = true, d = \"x\", e = -3, f = 2.0 }\no = 7\nsize = \"1GiB\"\nb = \"4KiB\"",
        )
        .unwrap();
        assert_eq!(s.m["a"], "1");
        assert_eq!(s.m["b"], "2.5");
        assert_eq!(s.m["c"], "true");
        assert_eq!(s.m["d"], "x");
        assert_eq!(s.m["e"], "-3");
        assert_eq!(s.m["f"], "2.0");
        assert_eq!(s.o.as_deref(), Some("7"));
        assert_eq!(s.size, Some(1024));
        assert_eq!(s.b, 4096);
        let e = toml::from_str::<S>("m = { a = [1] }\nb = 1").unwrap_err();
        assert!(e.message().contains("got a list"), "{e}");
        let e = toml::from_str::<S>("m = { a = 1979-05-27 }\nb = 1").unwrap_err();
        assert!(e.message().contains("a table or a date"), "{e}");

        let j: S = serde_json::from_str(
            r#"{"m": {"n": 3, "x": 0.5, "y": false}, "size": 64, "b": 100, "j": [1, "a"]}"#,
        )
        .unwrap();
        assert_eq!(j.m["n"], "3");
        assert_eq!(j.m["x"], "0.5");
        assert_eq!(j.m["y"], "false");
        assert_eq!(j.size, Some(64));
        let text = serde_json::to_string(&j).unwrap();
        assert!(text.contains("\"size\":\"64MiB\""), "{text}");
        assert!(text.contains("\"b\":\"100B\""), "{text}");
        assert!(text.contains("\"j\":[1,\"a\"]"), "{text}");
        assert_eq!(serde_json::from_str::<S>(&text).unwrap(), j);

        let bytes = postcard::to_stdvec(&j).unwrap();
        assert_eq!(postcard::from_bytes::<S>(&bytes).unwrap(), j);
        let none = S {
            m: BTreeMap::new(),
            o: None,
            size: None,
            b: 0,
            j: None,
        };
        let bytes = postcard::to_stdvec(&none).unwrap();
        assert_eq!(postcard::from_bytes::<S>(&bytes).unwrap(), none);
    }
}
