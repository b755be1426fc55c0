//! Workloads beyond independent prompts: shared prefixes, multi-turn sessions, trace replay
//! and conversations from a file. Each is exact in tokens under the experiment's tokenizer
//! and seeded like the synthetic prompts, so a run repeats exactly.
//!
//! * [`SharedPrefix`]: `groups` prefixes of `prefix_tokens`, each followed by one of
//!   `prompts_per_group` questions, visited round-robin or at random.
//! * [`Sessions`]: multi-turn sessions of synthetic user turns; each turn sends the whole
//!   history with the server's own replies, so the next turn's prefix is what the server
//!   cached. Sessions are the unit of concurrency.
//! * [`Trace`]: a mooncake-format trace (`timestamp` in ms, `input_length`,
//!   `output_length`, `hash_ids` of fixed-size token blocks) sent at its times; equal hash
//!   ids give identical token blocks, different ones differ.
//! * [`Conversations`]: JSON-lines (`{"messages": [...]}`) or ShareGPT conversations,
//!   replayed as sessions: the file's user turns, the server's replies.

use std::sync::Arc;
use std::time::Duration;

use harness_core::config::{GroupOrder, WorkloadKind};

use crate::error::Result;
use crate::prompts::{PromptSynth, TokenCounter};

mod conversations;
mod trace;

pub use conversations::{Conversation, Conversations};
pub use trace::{Trace, TraceEntry};

/// What a cell sends; see the [module docs](self).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Workload {
    /// Independent prompts of the cell's ISL (or a dataset's).
    #[default]
    Synthetic,
    /// Prompts sharing prefixes.
    SharedPrefix(SharedPrefix),
    /// Multi-turn synthetic sessions.
    Sessions(Sessions),
    /// A trace replayed at its times.
    Trace(Arc<Trace>),
    /// Conversations replayed as sessions.
    Conversations(Arc<Conversations>),
}

/// Shared-prefix prompts.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct SharedPrefix {
    /// Distinct prefixes.
    pub groups: u32,
    /// Distinct questions per prefix.
    pub prompts_per_group: u32,
    /// Tokens of each prefix.
    pub prefix_tokens: u32,
    /// Tokens of each question; `None`: the cell's ISL.
    pub question_tokens: Option<u32>,
    /// The order of groups.
    pub order: GroupOrder,
}

impl SharedPrefix {
    /// `groups` prefixes of `prefix_tokens`, `prompts_per_group` questions each (of the
    /// cell's ISL), round-robin.
    pub fn new(groups: u32, prompts_per_group: u32, prefix_tokens: u32) -> Self {
        SharedPrefix {
            groups: groups.max(1),
            prompts_per_group: prompts_per_group.max(1),
            prefix_tokens,
            question_tokens: None,
            order: GroupOrder::RoundRobin,
        }
    }

    /// Request `index`'s group and question.
    pub fn pick(&self, seed: u64, index: u64) -> (u32, u32) {
        let (g, p) = (u64::from(self.groups), u64::from(self.prompts_per_group));
        let (group, question) = match self.order {
            GroupOrder::Random => {
                let h = mix(seed ^ mix(index ^ 0x0DE5));
                (h % g, (h / g) % p)
            }
            _ => (index % g, (index / g) % p),
        };
        (group as u32, question as u32)
    }

    /// Request `index`'s prompt and its token count: group's prefix, then the question.
    pub fn prompt(&self, synth: &PromptSynth, seed: u64, index: u64, isl: u32) -> (String, u64) {
        let (group, question) = self.pick(seed, index);
        let q = self.question_tokens.unwrap_or(isl);
        let mut text = synth.prompt(self.prefix_tokens, mix(seed ^ 0x9F1E ^ u64::from(group)));
        text.push_str(&synth.prompt(
            q,
            mix(seed ^ mix(u64::from(group) << 32 | u64::from(question))),
        ));
        (text, u64::from(self.prefix_tokens) + u64::from(q))
    }
}

/// Multi-turn synthetic sessions.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Sessions {
    /// Turns per session.
    pub turns: u32,
    /// Tokens of each user turn; `None`: the cell's ISL.
    pub user_tokens: Option<u32>,
    /// The pause between a reply and the next turn.
    pub think_time: Duration,
}

impl Sessions {
    /// Sessions of `turns` turns, no think time.
    pub fn new(turns: u32) -> Self {
        Sessions {
            turns: turns.max(1),
            user_tokens: None,
            think_time: Duration::ZERO,
        }
    }
}

impl Workload {
    /// The workload an experiment asks for, with its files read and checked against
    /// `max_context` (blocking: reads files and, for conversations, the tokenizer).
    /// `tokens` counts tokens under the experiment's tokenizer; it is called for
    /// conversations only.
    ///
    /// # Errors
    /// [`Error::Invalid`](crate::Error::Invalid) naming the file and line of a bad trace or
    /// conversation; [`Error::Read`](crate::Error::Read) when a file cannot be read.
    pub fn from_config(
        cfg: &harness_core::config::Workload,
        max_context: Option<u32>,
        tokens: impl FnOnce() -> Result<TokenCounter>,
    ) -> Result<Self> {
        let path = || cfg.path.clone().unwrap_or_default();
        Ok(match cfg.kind {
            WorkloadKind::SharedPrefix => Workload::SharedPrefix(SharedPrefix {
                groups: cfg.groups.map_or(1, |g| g.get()),
                prompts_per_group: cfg.prompts_per_group.map_or(8, |g| g.get()),
                prefix_tokens: cfg.prefix_tokens.map_or(0, |g| g.get()),
                question_tokens: cfg.question_tokens.map(|g| g.get()),
                order: cfg.order.unwrap_or_default(),
            }),
            WorkloadKind::Sessions => Workload::Sessions(Sessions {
                turns: cfg.turns.map_or(1, |t| t.get()),
                user_tokens: cfg.user_tokens.map(|t| t.get()),
                think_time: cfg.think_time.map(|t| t.get()).unwrap_or_default(),
            }),
            WorkloadKind::Trace => {
                let mut t = Trace::load(&path(), cfg.block_tokens.map_or(512, |b| b.get()))?;
                if let Some(max) = max_context {
                    t.check_context(max)?;
                }
                t.time_scale = cfg.time_scale.unwrap_or(1.0);
                Workload::Trace(Arc::new(t))
            }
            WorkloadKind::Conversations => {
                let counter = tokens()?;
                let mut c = Conversations::load(&path(), &counter, max_context)?;
                c.think_time = cfg.think_time.map(|t| t.get()).unwrap_or_default();
                Workload::Conversations(Arc::new(c))
            }
            _ => Workload::Synthetic,
        })
    }

    /// Whether requests come in sessions (each turn waits for the last one's reply).
    pub fn is_sessions(&self) -> bool {
        matches!(self, Workload::Sessions(_) | Workload::Conversations(_))
    }

    /// Whether several clients share it item by item (a trace's requests, conversations,
    /// sessions), not by splitting counts: see [`crate::load::LoadSpec::shard`].
    pub fn shared_by_item(&self) -> bool {
        matches!(
            self,
            Workload::Trace(_) | Workload::Conversations(_) | Workload::Sessions(_)
        )
    }
}

/// SplitMix64: a well-mixed hash of a counter.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_prompts_share_exactly_their_group_s_prefix() {
        let synth = PromptSynth::new("cl100k_base").expect("encoding");
        let w = SharedPrefix::new(3, 4, 40);
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let prompts: Vec<(String, u64)> = (0..12).map(|i| w.prompt(&synth, 7, i, 10)).collect();
        for (i, (p, n)) in prompts.iter().enumerate() {
            assert_eq!(*n, 50);
            assert_eq!(words(p).len(), 50, "request {i}");
            let tokens = crate::prompts::count_tokens("cl100k_base", p).expect("count");
            assert_eq!(tokens, 50, "request {i}: exact under cl100k_base");
            assert_eq!(w.pick(7, i as u64), ((i % 3) as u32, (i / 3) as u32));
        }
        // Same group: the first 40 words agree; other groups' differ.
        let (a, b, c) = (
            words(&prompts[0].0),
            words(&prompts[3].0),
            words(&prompts[1].0),
        );
        assert_eq!(a[..40], b[..40]);
        assert_ne!(a[40..], b[40..], "questions differ");
        assert_ne!(a[..40], c[..40]);
        // 12 requests, 12 distinct prompts.
        let distinct: std::collections::BTreeSet<_> = prompts.iter().map(|p| &p.0).collect();
        assert_eq!(distinct.len(), 12);
        // Random order: seeded, every group visited.
        let mut r = w;
        r.order = GroupOrder::Random;
        let groups: std::collections::BTreeSet<u32> = (0..60).map(|i| r.pick(1, i).0).collect();
        assert_eq!(groups.len(), 3);
        assert_eq!(r.pick(1, 5), r.pick(1, 5));
    }
}
