//! [`Workload`]: what each cell's requests are made of.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::values::{HumanDuration, Positive};

/// What each cell's requests are: independent synthetic prompts (the default), prompts that
/// share a prefix, multi-turn sessions, a replayed trace, or conversations from a file.
///
/// One flat section: `kind` picks the workload and each kind reads its own fields (a field
/// of another kind is an error). The cell's ISL and OSL still apply where a kind has no
/// length of its own: the question after a shared prefix, a session's user turn, every
/// output.
///
/// ```
/// let yaml = r#"
/// name: prefix
/// model: {name: m}
/// concurrency: [8]
/// benchmark: {isl_osl: [[128, 64]]}
/// workload: {kind: shared_prefix, groups: 4, prompts_per_group: 16, prefix_tokens: 1024}
/// "#;
/// let exp = harness_core::Experiment::from_yaml_str(yaml, "prefix.yaml")?;
/// assert_eq!(exp.workload.kind, harness_core::config::WorkloadKind::SharedPrefix);
/// # Ok::<(), harness_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Workload {
    /// Which workload.
    #[serde(default)]
    pub kind: WorkloadKind,
    /// `shared_prefix`: how many distinct prefixes (system prompts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Positive>,
    /// `shared_prefix`: distinct questions per prefix (default 8); requests cycle through
    /// the `groups × prompts_per_group` prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts_per_group: Option<Positive>,
    /// `shared_prefix`: tokens of each shared prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_tokens: Option<Positive>,
    /// `shared_prefix`: tokens of the question after the prefix (default: the cell's ISL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_tokens: Option<Positive>,
    /// `shared_prefix`: the order of groups (default `round_robin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<GroupOrder>,
    /// `sessions`: turns per session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<Positive>,
    /// `sessions`: tokens of each user turn (default: the cell's ISL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_tokens: Option<Positive>,
    /// `sessions`, `conversations`: the pause between a reply and the next turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think_time: Option<HumanDuration>,
    /// `trace`, `conversations`: the JSON-lines file (relative to the working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `trace`: multiplies the trace's times (0.5 replays twice as fast).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_time_scale"
    )]
    pub time_scale: Option<f64>,
    /// `trace`: tokens per hash id (512 in the mooncake traces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_tokens: Option<Positive>,
}

/// The workloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkloadKind {
    /// Independent random prompts of the cell's ISL (or `load.dataset`'s prompts).
    #[default]
    Synthetic,
    /// `groups` shared prefixes of `prefix_tokens`, each followed by one of
    /// `prompts_per_group` questions.
    SharedPrefix,
    /// Multi-turn sessions: each turn sends the whole history, the server's own replies
    /// included; the concurrency (or request rate) counts sessions.
    Sessions,
    /// A mooncake-format trace replayed at its times.
    Trace,
    /// Conversations from a JSON-lines or ShareGPT file, replayed as sessions.
    Conversations,
}

impl WorkloadKind {
    /// The name as written in experiments.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Synthetic => "synthetic",
            WorkloadKind::SharedPrefix => "shared_prefix",
            WorkloadKind::Sessions => "sessions",
            WorkloadKind::Trace => "trace",
            WorkloadKind::Conversations => "conversations",
        }
    }
}

/// The order in which shared-prefix requests visit the groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GroupOrder {
    /// Group 0, 1, ..., G-1, 0, 1, ...: every group's prefix comes back after G-1 others
    /// (the hardest order for an LRU cache smaller than the prefixes).
    #[default]
    RoundRobin,
    /// A seeded random group per request.
    Random,
}

fn de_time_scale<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = f64::deserialize(d)?;
    if !v.is_finite() || v <= 0.0 || v > 1e6 {
        return Err(serde::de::Error::custom(format!(
            "expected a factor greater than 0 (1 replays at the trace's pace), got {v}"
        )));
    }
    Ok(Some(v))
}

impl Workload {
    /// Whether this is the default (synthetic, no field set).
    pub fn is_default(&self) -> bool {
        *self == Workload::default()
    }

    /// Checks the fields against the kind: the ones it needs are set, no other kind's are.
    ///
    /// # Errors
    /// The field's path within `workload` and a message.
    pub fn check(&self) -> Result<(), (String, String)> {
        let set: [(&str, bool); 11] = [
            ("groups", self.groups.is_some()),
            ("prompts_per_group", self.prompts_per_group.is_some()),
            ("prefix_tokens", self.prefix_tokens.is_some()),
            ("question_tokens", self.question_tokens.is_some()),
            ("order", self.order.is_some()),
            ("turns", self.turns.is_some()),
            ("user_tokens", self.user_tokens.is_some()),
            ("think_time", self.think_time.is_some()),
            ("path", self.path.is_some()),
            ("time_scale", self.time_scale.is_some()),
            ("block_tokens", self.block_tokens.is_some()),
        ];
        let (required, optional): (&[&str], &[&str]) = match self.kind {
            WorkloadKind::Synthetic => (&[], &[]),
            WorkloadKind::SharedPrefix => (
                &["groups", "prefix_tokens"],
                &["prompts_per_group", "question_tokens", "order"],
            ),
            WorkloadKind::Sessions => (&["turns"], &["user_tokens", "think_time"]),
            WorkloadKind::Trace => (&["path"], &["time_scale", "block_tokens"]),
            WorkloadKind::Conversations => (&["path"], &["think_time"]),
        };
        let kind = self.kind.as_str();
        for (name, is_set) in set {
            if is_set && !required.contains(&name) && !optional.contains(&name) {
                return Err((
                    format!("workload.{name}"),
                    format!("`{name}` does not apply to `kind: {kind}`"),
                ));
            }
            if !is_set && required.contains(&name) {
                return Err((
                    format!("workload.{name}"),
                    format!("`kind: {kind}` needs `{name}`"),
                ));
            }
        }
        Ok(())
    }
}
