//! Validated value types of the experiment file. Each rejects bad input while it is being
//! deserialized, so the error carries the line, column and field path of the offending value.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The most values one sweep axis may hold.
pub const MAX_SWEEP_VALUES: usize = 10_000;

/// A name that is safe as one path segment in any store: 1 to 128 characters of
/// `A-Z a-z 0-9 . _ -`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Validates `s` as a name.
    pub fn new(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 128 {
            return Err(format!(
                "a name must have 1 to 128 characters, got {}",
                s.len()
            ));
        }
        if s.starts_with('.') {
            return Err(format!("a name must not start with `.`, got `{s}`"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "a name may hold only letters, digits, `.`, `_` and `-`; `{s}` has {c:?}"
            ));
        }
        Ok(Name(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(&s).map_err(de::Error::custom)
    }
}

/// A positive whole number (a concurrency, a token count).
pub type Positive = std::num::NonZeroU32;

/// A request rate in requests per second: finite and greater than zero.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Rate(f64);

impl Rate {
    /// Validates a rate.
    pub fn new(v: f64) -> Result<Self, String> {
        if v.is_finite() && v > 0.0 {
            Ok(Rate(v))
        } else {
            Err(format!(
                "a request rate must be a finite number of requests/s above 0, got {v}"
            ))
        }
    }

    /// Requests per second.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Rate::new(f64::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// One ISL/OSL pair: input and output sequence length in tokens, written `[isl, osl]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IslOsl {
    /// Input sequence length in tokens.
    pub isl: Positive,
    /// Output sequence length in tokens.
    pub osl: Positive,
}

impl Serialize for IslOsl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        [self.isl.get(), self.osl.get()].serialize(s)
    }
}

impl<'de> Deserialize<'de> for IslOsl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IslOsl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pair [isl, osl] of token counts above 0")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IslOsl, A::Error> {
                let isl: u64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let osl: u64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(
                        "expected a pair [isl, osl], got more than two numbers",
                    ));
                }
                let tokens = |v: u64, what: &str| {
                    u32::try_from(v)
                        .ok()
                        .and_then(Positive::new)
                        .ok_or_else(|| {
                            de::Error::custom(format!(
                                "{what} must be a token count from 1 to {}, got {v}",
                                u32::MAX
                            ))
                        })
                };
                Ok(IslOsl {
                    isl: tokens(isl, "isl")?,
                    osl: tokens(osl, "osl")?,
                })
            }
        }
        d.deserialize_seq(V)
    }
}

/// The values of one sweep axis: at least one, at most [`MAX_SWEEP_VALUES`], no duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep<T>(Vec<T>);

impl<T> Sweep<T> {
    /// The values in the order they were written.
    pub fn values(&self) -> &[T] {
        &self.0
    }
}

impl<T: SweepValue> Sweep<T> {
    /// Validates a list of values.
    pub fn new(values: Vec<T>) -> Result<Self, String> {
        if values.is_empty() {
            return Err("a sweep needs at least one value".into());
        }
        if values.len() > MAX_SWEEP_VALUES {
            return Err(format!(
                "a sweep may hold at most {MAX_SWEEP_VALUES} values, got {}",
                values.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for v in &values {
            if !seen.insert(v.key()) {
                return Err(format!(
                    "duplicate value {} in the sweep: each value may appear once",
                    v.key()
                ));
            }
        }
        Ok(Sweep(values))
    }
}

/// A value that can stand in a sweep: it has a canonical text used for duplicate checks and ids.
pub trait SweepValue {
    /// The canonical text of the value.
    fn key(&self) -> String;
}

impl SweepValue for Positive {
    fn key(&self) -> String {
        self.to_string()
    }
}

impl SweepValue for Rate {
    fn key(&self) -> String {
        format_number(self.0)
    }
}

impl SweepValue for IslOsl {
    fn key(&self) -> String {
        format!("[{}, {}]", self.isl, self.osl)
    }
}

impl SweepValue for AxisValue {
    fn key(&self) -> String {
        self.to_string()
    }
}

/// Formats a float without trailing zeros: `2`, `0.5`, `12.25`.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

impl<T: Serialize> Serialize for Sweep<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de> + SweepValue> Deserialize<'de> for Sweep<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + SweepValue> Visitor<'de> for V<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of sweep values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    if out.len() == MAX_SWEEP_VALUES {
                        return Err(de::Error::custom(format!(
                            "a sweep may hold at most {MAX_SWEEP_VALUES} values"
                        )));
                    }
                    out.push(v);
                }
                Ok(out)
            }
        }
        let values = d.deserialize_seq(V::<T>(std::marker::PhantomData))?;
        Sweep::new(values).map_err(de::Error::custom)
    }
}

/// A value of a user-defined sweep axis: a whole number, a number or a short word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AxisValue {
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// A word of `A-Z a-z 0-9 . _ -`.
    Str(Name),
}

impl fmt::Display for AxisValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AxisValue::Int(v) => write!(f, "{v}"),
            AxisValue::Float(v) => f.write_str(&format_number(*v)),
            AxisValue::Str(v) => f.write_str(v.as_str()),
        }
    }
}

/// A duration written the human way: `500ms`, `30s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let dur = humantime::parse_duration(&s).map_err(|e| {
            de::Error::custom(format!(
                "expected a duration such as `500ms`, `30s` or `5m`, got `{s}` ({e})"
            ))
        })?;
        if dur.is_zero() {
            return Err(de::Error::custom(format!(
                "a duration must be above zero, got `{s}`"
            )));
        }
        if dur > Duration::from_secs(30 * 24 * 3600) {
            return Err(de::Error::custom(format!(
                "a duration may be at most 30 days, got `{s}`"
            )));
        }
        Ok(HumanDuration(dur))
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}
