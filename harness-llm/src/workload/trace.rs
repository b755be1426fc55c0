//! Mooncake-format traces: one JSON object per line with `timestamp` (ms from the trace's
//! start), `input_length`, `output_length` and `hash_ids` (one id per block of
//! `block_tokens` input tokens; equal ids are equal blocks).

use std::time::Duration;

use serde::Deserialize;

use super::mix;
use crate::error::{Error, Result};
use crate::prompts::PromptSynth;

/// One request of a trace.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct TraceEntry {
    /// When it is sent, in ms from the trace's start.
    pub timestamp: f64,
    /// Input tokens.
    pub input_length: u32,
    /// Output tokens asked for.
    pub output_length: u32,
    /// The ids of its input's blocks, in order.
    #[serde(default)]
    pub hash_ids: Vec<u64>,
}

/// A trace: its requests in time order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Trace {
    entries: Vec<TraceEntry>,
    /// Where each entry stands in the file (1-based lines).
    lines: Vec<usize>,
    source: String,
    /// Tokens per hash id.
    pub block_tokens: u32,
    /// Multiplies the trace's times.
    pub time_scale: f64,
}

impl Trace {
    /// Reads a trace file (blocking).
    ///
    /// # Errors
    /// As [`Trace::parse`]; [`Error::Read`] when the file cannot be read.
    pub fn load(path: &std::path::Path, block_tokens: u32) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), block_tokens)
    }

    /// Parses JSON lines; `source` names them in errors. Blank lines are skipped.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `source:line` for a line that is not an entry, a timestamp
    /// before the previous one, an input of no tokens, or more hash ids than the input has
    /// blocks; or an empty trace.
    pub fn parse(text: &str, source: &str, block_tokens: u32) -> Result<Self> {
        let block_tokens = block_tokens.max(1);
        let mut entries: Vec<TraceEntry> = Vec::new();
        let mut lines = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{source}:{}", i + 1);
            let e: TraceEntry =
                serde_json::from_str(line).map_err(|e| Error::invalid(&at, e.to_string()))?;
            if !e.timestamp.is_finite() || e.timestamp < 0.0 {
                return Err(Error::invalid(
                    at,
                    format!(
                        "timestamp {} is not a time in ms from the start",
                        e.timestamp
                    ),
                ));
            }
            if let Some(last) = entries.last()
                && e.timestamp < last.timestamp
            {
                return Err(Error::invalid(
                    at,
                    format!(
                        "timestamp {} comes before the previous line's {}: a trace is in time order",
                        e.timestamp, last.timestamp
                    ),
                ));
            }
            if e.input_length == 0 || e.output_length == 0 {
                return Err(Error::invalid(
                    at,
                    "input_length and output_length must be at least 1",
                ));
            }
            let blocks = e.input_length.div_ceil(block_tokens) as usize;
            if e.hash_ids.len() > blocks {
                return Err(Error::invalid(
                    at,
                    format!(
                        "{} hash_ids for {} input tokens: blocks of {block_tokens} tokens make {blocks}",
                        e.hash_ids.len(),
                        e.input_length
                    ),
                ));
            }
            entries.push(e);
            lines.push(i + 1);
        }
        if entries.is_empty() {
            return Err(Error::invalid(source, "no requests in the trace"));
        }
        Ok(Trace {
            entries,
            lines,
            source: source.to_owned(),
            block_tokens,
            time_scale: 1.0,
        })
    }

    /// Refuses an entry whose input and output do not fit in `max_context` tokens.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the entry's file and line.
    pub fn check_context(&self, max_context: u32) -> Result<()> {
        for (e, line) in self.entries.iter().zip(&self.lines) {
            let need = u64::from(e.input_length) + u64::from(e.output_length);
            if need > u64::from(max_context) {
                return Err(Error::invalid(
                    format!("{}:{line}", self.source),
                    format!(
                        "input_length {} + output_length {} is {need} tokens, beyond the model's context of {max_context} (model.max_context)",
                        e.input_length, e.output_length
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The requests, in time order.
    pub fn entries(&self) -> &[TraceEntry] {
        &self.entries
    }

    /// How many requests.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When request `index` is due, from the first request's time, scaled; `None` past the
    /// end.
    pub fn due(&self, index: u64) -> Option<Duration> {
        let first = self.entries.first()?.timestamp;
        let e = self.entries.get(usize::try_from(index).ok()?)?;
        Duration::try_from_secs_f64((e.timestamp - first) * self.time_scale / 1e3).ok()
    }

    /// Request `index`'s prompt: block `j` is the text of hash id `hash_ids[j]` (the same
    /// text wherever the id appears; a last, partial block is that text's beginning),
    /// blocks without an id are the request's own; exactly `input_length` tokens.
    pub fn prompt(&self, synth: &PromptSynth, seed: u64, index: u64) -> Option<(String, u64, u32)> {
        let e = self.entries.get(usize::try_from(index).ok()?)?;
        let mut text = String::with_capacity(e.input_length as usize * 6);
        let mut left = e.input_length;
        let mut block = 0usize;
        while left > 0 {
            let n = left.min(self.block_tokens);
            let block_seed = match e.hash_ids.get(block) {
                Some(id) => mix(seed ^ 0x4A54 ^ mix(*id)),
                None => mix(seed ^ mix(index << 20 | block as u64) ^ 0x0111),
            };
            text.push_str(&synth.prompt(n, block_seed));
            left -= n;
            block += 1;
        }
        Some((text, u64::from(e.input_length), e.output_length))
    }

    /// A trace of `n` requests for tests and examples: Poisson arrivals at `rate`/s, inputs
    /// of 1 to 8 blocks that share a prefix of 1 to 3 blocks with one of 4 "documents" about
    /// half the time, seeded.
    pub fn synthetic_jsonl(n: usize, rate: f64, block_tokens: u32, seed: u64) -> String {
        let mut out = String::new();
        let mut t = 0.0f64;
        let mut next_id = 1000u64;
        let unit = |k: u64| (mix(seed ^ mix(k)) >> 11) as f64 / (1u64 << 53) as f64;
        for i in 0..n as u64 {
            if i > 0 {
                t += -(1.0 - unit(i * 4)).ln() / rate.max(1e-9) * 1e3;
            }
            let blocks = 1 + (unit(i * 4 + 1) * 8.0) as u64;
            let shared = if unit(i * 4 + 2) < 0.5 {
                (1 + (unit(i * 4 + 3) * 3.0) as u64).min(blocks)
            } else {
                0
            };
            let doc = (mix(seed ^ i) % 4) * 10;
            let mut ids: Vec<u64> = (0..shared).map(|k| doc + k).collect();
            while (ids.len() as u64) < blocks {
                ids.push(next_id);
                next_id += 1;
            }
            // The last block is partial.
            let input = (blocks - 1) * u64::from(block_tokens)
                + 1
                + mix(seed ^ i ^ 0xB10C) % u64::from(block_tokens);
            let output = 1 + mix(seed ^ i ^ 0x0F7F) % 64;
            out.push_str(&format!(
                "{{\"timestamp\": {}, \"input_length\": {input}, \"output_length\": {output}, \"hash_ids\": {ids:?}}}\n",
                t.round() as u64
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_hash_ids_give_equal_blocks_and_lengths_are_exact() {
        let synth = PromptSynth::new("cl100k_base").expect("encoding");
        let text = "{\"timestamp\": 0, \"input_length\": 20, \"output_length\": 4, \"hash_ids\": [1, 2, 3]}\n\
                    {\"timestamp\": 5, \"input_length\": 17, \"output_length\": 4, \"hash_ids\": [1, 2, 9]}\n\
                    \n\
                    {\"timestamp\": 5, \"input_length\": 10, \"output_length\": 4, \"hash_ids\": [7]}\n";
        let t = Trace::parse(text, "t.jsonl", 8).expect("trace");
        assert_eq!(t.len(), 3);
        let words = |i: u64| {
            let (p, n, _) = t.prompt(&synth, 3, i).expect("entry");
            let w: Vec<String> = p.split_whitespace().map(str::to_owned).collect();
            assert_eq!(w.len() as u64, n);
            w
        };
        let (a, b, c) = (words(0), words(1), words(2));
        assert_eq!(a.len(), 20);
        assert_eq!(a[..16], b[..16], "ids 1 and 2 shared");
        assert_ne!(a[16..17], b[16..17], "id 3 and id 9 differ");
        assert_eq!(c.len(), 10);
        assert_ne!(c[..8], a[..8]);
        // Block 2 of request 2 has no id: its own text.
        assert_eq!(t.due(1), Some(Duration::from_millis(5)));
        assert_eq!(t.due(3), None);
    }

    #[test]
    fn bad_traces_are_located() {
        let bad = |text: &str| {
            Trace::parse(text, "t.jsonl", 512)
                .expect_err("bad")
                .to_string()
        };
        let ok = "{\"timestamp\": 10, \"input_length\": 600, \"output_length\": 4, \"hash_ids\": [1, 2]}";
        let e = bad(&format!(
            "{ok}\n{{\"timestamp\": 20, \"output_length\": 4}}\n"
        ));
        assert!(
            e.starts_with("t.jsonl:2") && e.contains("input_length"),
            "{e}"
        );
        let e = bad(&format!(
            "{ok}\n{{\"timestamp\": 5, \"input_length\": 6, \"output_length\": 4}}\n"
        ));
        assert!(e.starts_with("t.jsonl:2") && e.contains("before"), "{e}");
        let e = bad(
            "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 4, \"hash_ids\": [1, 2, 3]}",
        );
        assert!(
            e.starts_with("t.jsonl:1") && e.contains("3 hash_ids"),
            "{e}"
        );
        let e = bad("\n{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 4}");
        assert!(e.starts_with("t.jsonl:2"), "{e}");
        assert!(bad("").contains("no requests"));
        let e = bad("not json");
        assert!(e.starts_with("t.jsonl:1"), "{e}");
        let t = Trace::parse(&format!("\n\n{ok}"), "t.jsonl", 512).expect("ok");
        let e = t.check_context(512).expect_err("too long").to_string();
        assert!(e.starts_with("t.jsonl:3") && e.contains("604"), "{e}");
        t.check_context(604).expect("fits");
    }

    #[test]
    fn the_synthetic_trace_parses_and_shares_blocks() {
        let text = Trace::synthetic_jsonl(200, 20.0, 64, 1);
        let t = Trace::parse(&text, "gen", 64).expect("valid");
        assert_eq!(t.len(), 200);
        let shared = t
            .entries()
            .iter()
            .filter(|e| e.hash_ids.first().is_some_and(|h| *h < 1000))
            .count();
        assert!((50..150).contains(&shared), "{shared}");
        assert_eq!(text, Trace::synthetic_jsonl(200, 20.0, 64, 1), "seeded");
    }
}
