//! Writes a mooncake-format trace (JSON lines of `timestamp` in ms, `input_length`,
//! `output_length`, `hash_ids`) for trying `workload: {kind: trace}` without production data:
//! Poisson arrivals, inputs of 1 to 8 blocks of which about half start with 1 to 3 blocks of
//! one of 4 shared "documents". `experiments/data/mooncake-sample.jsonl` is its output with
//! the defaults.
//!
//! ```text
//! cargo run -p examples --example make_trace -- [REQUESTS] [RATE] [SEED] [BLOCK_TOKENS] > trace.jsonl
//! ```
//! Defaults: 200 requests, 20 requests/s, seed 1, 512-token blocks.

use harness_llm::workload::Trace;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let requests: usize = arg(0, "200")
        .parse()
        .map_err(|e| format!("REQUESTS: {e}"))?;
    let rate: f64 = arg(1, "20").parse().map_err(|e| format!("RATE: {e}"))?;
    let seed: u64 = arg(2, "1").parse().map_err(|e| format!("SEED: {e}"))?;
    let block: u32 = arg(3, "512")
        .parse()
        .map_err(|e| format!("BLOCK_TOKENS: {e}"))?;
    if !(rate.is_finite() && rate > 0.0) || block == 0 {
        return Err("RATE and BLOCK_TOKENS must be greater than 0".into());
    }
    print!("{}", Trace::synthetic_jsonl(requests, rate, block, seed));
    Ok(())
}
