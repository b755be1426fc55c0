//! Treatments (named variants of an experiment, each deployed in turn), variables for
//! placeholders, and the SLO search.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::values::{Name, Positive};

/// A variable's value: text, a number or a boolean, written into `{name}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct VarValue(String);

impl VarValue {
    /// The value as it is substituted.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for VarValue {
    fn from(s: &str) -> Self {
        VarValue(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for VarValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = VarValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("text, a number or true/false")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<VarValue, E> {
                Ok(VarValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<VarValue, E> {
                Ok(VarValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<VarValue, E> {
                Ok(VarValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<VarValue, E> {
                Ok(VarValue(super::values::format_number(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<VarValue, E> {
                Ok(VarValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The sections a treatment may change: those of the deployment and of how each cell is
/// measured. The sweep (`concurrency`, `benchmark`, `sweep`, `search`), `name` and `storage`
/// belong to the whole run.
pub const TREATMENT_SECTIONS: [&str; 12] = [
    "vars",
    "model",
    "endpoint",
    "endpoint_type",
    "deployment",
    "backend",
    "load",
    "tokenizer",
    "slo",
    "policy",
    "telemetry",
    "workload",
];

/// One treatment: a name, and the sections it sets over the experiment's (merged key by key;
/// `vars` fill `{name}` placeholders of the deployment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Treatment {
    /// The treatment's name: the first part of its cells' ids (`treatment=<name>,...`).
    pub name: Name,
    /// The sections it sets, as written.
    #[serde(flatten)]
    pub overlay: serde_json::Map<String, serde_json::Value>,
}

/// The treatments of an experiment, in the order written. Written as a mapping from name to
/// sections (`treatments: {p1: {vars: {parallel: 1}}}`); stored as a list, which keeps the
/// order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Treatments(Vec<Treatment>);

impl Treatments {
    /// The treatments in order.
    pub fn iter(&self) -> impl Iterator<Item = &Treatment> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the experiment has none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A treatment by name.
    pub fn get(&self, name: &str) -> Option<&Treatment> {
        self.0.iter().find(|t| t.name.as_str() == name)
    }
}

impl<'de> Deserialize<'de> for Treatments {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Treatments;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a section of treatments, `name: {sections}` each")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Treatments, A::Error> {
                let mut out: Vec<Treatment> = Vec::new();
                while let Some(name) = map.next_key::<Name>()? {
                    let overlay: Option<serde_json::Map<String, serde_json::Value>> =
                        map.next_value()?;
                    if out.iter().any(|t| t.name == name) {
                        return Err(de::Error::custom(format!(
                            "the treatment `{name}` is given twice"
                        )));
                    }
                    let overlay = overlay.unwrap_or_default();
                    check_sections(&overlay).map_err(de::Error::custom)?;
                    out.push(Treatment { name, overlay });
                }
                Ok(Treatments(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Treatments, A::Error> {
                let mut out: Vec<Treatment> = Vec::new();
                while let Some(t) = seq.next_element::<Treatment>()? {
                    if out.iter().any(|o| o.name == t.name) {
                        return Err(de::Error::custom(format!(
                            "the treatment `{}` is given twice",
                            t.name
                        )));
                    }
                    check_sections(&t.overlay).map_err(de::Error::custom)?;
                    out.push(t);
                }
                Ok(Treatments(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn check_sections(overlay: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    for key in overlay.keys() {
        if !TREATMENT_SECTIONS.contains(&key.as_str()) {
            return Err(format!(
                "a treatment cannot set `{key}`; it may set {}",
                TREATMENT_SECTIONS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The axis an SLO search varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchAxis {
    /// Requests in flight (closed loop).
    Concurrency,
    /// Requests per second (open loop).
    RequestRate,
}

impl SearchAxis {
    /// The cell parameter it sets.
    pub fn param(self) -> &'static str {
        match self {
            SearchAxis::Concurrency => "concurrency",
            SearchAxis::RequestRate => "request_rate",
        }
    }
}

/// A limit on a cell metric: an upper bound, written as a duration (`500ms`, in the
/// metric's milliseconds) or a number; or a lower bound, written `>= 0.95` (for metrics where
/// more is better, such as `goodput_fraction`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    value: f64,
    at_least: bool,
}

impl Limit {
    /// The bound in the metric's unit (milliseconds for a duration).
    pub fn get(self) -> f64 {
        self.value
    }

    /// Whether it is a lower bound (`>= v`) rather than an upper one.
    pub fn is_lower(self) -> bool {
        self.at_least
    }

    /// Whether `value` meets the limit (NaN never does).
    pub fn holds(self, value: f64) -> bool {
        if self.at_least {
            value >= self.value
        } else {
            value <= self.value
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (at_least, rest) = match (t.strip_prefix(">="), t.strip_prefix("<=")) {
            (Some(r), _) => (true, r.trim()),
            (_, Some(r)) => (false, r.trim()),
            _ => (false, t),
        };
        let value = match rest.parse::<f64>() {
            Ok(v) => v,
            Err(_) => humantime::parse_duration(rest)
                .map_err(|e| {
                    format!(
                        "expected a duration such as `500ms`, a number, or `>= 0.95`, got `{text}` ({e})"
                    )
                })?
                .as_secs_f64()
                * 1e3,
        };
        if value.is_finite() && value >= 0.0 {
            Ok(Limit { value, at_least })
        } else {
            Err(format!(
                "a limit must be a finite number of at least 0, got `{text}`"
            ))
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.at_least {
            s.serialize_str(&format!(">= {}", super::values::format_number(self.value)))
        } else {
            s.serialize_f64(self.value)
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Limit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `500ms`, a number, or `>= 0.95`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Limit, E> {
                Limit::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Limit, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Limit, E> {
                self.visit_f64(v as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Limit, E> {
                Limit::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn default_max_probes() -> Positive {
    Positive::new(16).unwrap_or(Positive::MIN)
}

fn default_confirm() -> bool {
    true
}

/// A search for the largest load at which the SLO holds, per treatment and ISL/OSL pair:
/// probes at `min` and doubling until one fails (or `max` passes), then bisection down to
/// `precision`, each probe an ordinary cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Search {
    /// The axis to vary.
    pub axis: SearchAxis,
    /// The lowest value tried.
    pub min: f64,
    /// The highest value tried.
    pub max: f64,
    /// The search stops when the first failing value is at most this far above the best
    /// passing one (default 1: an exact concurrency; for a rate, `min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    /// Limits on cell metrics that a probe must all meet, e.g. `ttft.p99: 500ms`,
    /// `itl.p99: 50ms`, `errors: 0` (failed requests), or `goodput_fraction: ">= 0.95"` (the
    /// share of requests that meet the experiment's per-request `slo`).
    pub slo: BTreeMap<String, Limit>,
    /// The most probes per treatment and ISL/OSL pair.
    #[serde(default = "default_max_probes")]
    pub max_probes: Positive,
    /// Probe the two values at the boundary once more before trusting them, and a value
    /// whose two probes disagree a third time: a value's verdict is the majority of its
    /// probes, so one noisy probe does not move the result.
    #[serde(default = "default_confirm")]
    pub confirm: bool,
}

/// The most candidate values one search may have.
pub const MAX_SEARCH_VALUES: usize = 1_000;

impl Search {
    /// The step between candidate values.
    pub fn step(&self) -> f64 {
        self.precision.unwrap_or(match self.axis {
            SearchAxis::Concurrency => 1.0,
            SearchAxis::RequestRate => self.min,
        })
    }

    /// The candidate values, ascending: `min`, `min + step`, ..., and `max`.
    pub fn candidates(&self) -> Vec<f64> {
        let step = self.step();
        let mut out = Vec::new();
        let mut v = self.min;
        while v < self.max - step * 1e-9 && out.len() < MAX_SEARCH_VALUES {
            out.push(v);
            v = self.min + step * out.len() as f64;
        }
        out.push(self.max);
        out
    }

    /// Checks what single fields cannot.
    ///
    /// # Errors
    /// A field path and a message.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        let bad = |path: &str, m: String| Err((format!("search.{path}"), m));
        if !(self.min.is_finite() && self.min > 0.0) {
            return bad("min", format!("must be above 0, got {}", self.min));
        }
        if !(self.max.is_finite() && self.max >= self.min) {
            return bad(
                "max",
                format!("must be at least min ({}), got {}", self.min, self.max),
            );
        }
        if self.axis == SearchAxis::Concurrency
            && (self.min.fract() != 0.0 || self.max.fract() != 0.0)
        {
            return bad("min", "a concurrency range needs whole numbers".into());
        }
        let step = self.step();
        if !(step.is_finite() && step > 0.0) {
            return bad("precision", format!("must be above 0, got {step}"));
        }
        if self.axis == SearchAxis::Concurrency && step.fract() != 0.0 {
            return bad("precision", "a concurrency step is a whole number".into());
        }
        let n = ((self.max - self.min) / step).ceil() + 1.0;
        if n > MAX_SEARCH_VALUES as f64 {
            return bad(
                "precision",
                format!(
                    "{n} candidate values between min and max; at most {MAX_SEARCH_VALUES}: raise the precision"
                ),
            );
        }
        if self.slo.is_empty() {
            return bad(
                "slo",
                "name at least one metric limit, e.g. `ttft.p99: 500ms`".into(),
            );
        }
        Ok(())
    }
}

/// Merges `overlay` into `base`: sections merge key by key, other values replace. A
/// deployment of another kind (`url`, `command`, `mock`, `manifests`) replaces the whole
/// section.
pub(crate) fn merge(base: &mut serde_json::Value, overlay: &serde_json::Value, top: bool) {
    use serde_json::Value;
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if top && k == "deployment" {
                    let kinds = ["url", "command", "mock", "manifests"];
                    let kind_of = |m: &serde_json::Map<String, Value>| {
                        kinds.iter().find(|k| m.contains_key(**k)).copied()
                    };
                    if let (Some(Value::Object(old)), Value::Object(new)) = (b.get(k), v)
                        && kind_of(new).is_some()
                        && kind_of(new) != kind_of(old)
                    {
                        b.insert(k.clone(), v.clone());
                        continue;
                    }
                }
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v, false),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}
