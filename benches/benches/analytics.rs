//! Statistics of harness-analytics at scale: summarising 10 million per-request records
//! (every distribution, exact percentiles), and one distribution of 10 million values.
//!
//! `cargo bench -p benches --bench analytics`; `ANALYTICS_ROWS=1000000` for a smaller run
//! (`cargo test` runs it once with 100,000 records as a smoke test).

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, ListArray, RecordBatch, StringArray, UInt16Array,
    UInt32Array, UInt64Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};
use criterion::{Criterion, criterion_group, criterion_main};
use harness_analytics::schema::records_schema;
use harness_analytics::{CellStats, Distribution};
use harness_core::config::Slo;

/// A records batch of `n` successful requests with one chunk gap each, built column by
/// column (as an importer or the parquet reader would hand it over).
fn batch(n: usize) -> RecordBatch {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let ttft: Vec<f64> = (0..n).map(|_| 20.0 + rand() * 30.0).collect();
    let itl: Vec<f64> = (0..n).map(|_| 8.0 + rand() * 4.0).collect();
    let latency: Vec<f64> = ttft.iter().zip(&itl).map(|(t, i)| t + 63.0 * i).collect();
    let start: Vec<u64> = (0..n as u64).map(|i| i * 1_000).collect();
    let end: Vec<u64> = start
        .iter()
        .zip(&latency)
        .map(|(s, l)| s + (l * 1e6) as u64)
        .collect();
    let offsets: Vec<i32> = (0..=n as i32).collect();
    let gaps: Vec<u64> = itl.iter().map(|v| (v * 1e6) as u64).collect();
    let gaps = ListArray::new(
        Arc::new(Field::new_list_field(DataType::UInt64, false)),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Arc::new(UInt64Array::from(gaps)),
        None,
    );
    let first: Vec<u64> = start
        .iter()
        .zip(&ttft)
        .map(|(s, t)| s + (t * 1e6) as u64)
        .collect();
    // An open loop: each request scheduled a little before it started.
    let scheduled: Vec<u64> = start.iter().map(|s| s.saturating_sub(500)).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(0..n as u64)),
        Arc::new(BooleanArray::from(vec![false; n])),
        Arc::new(UInt64Array::from(start)),
        Arc::new(UInt64Array::from(first)),
        Arc::new(UInt64Array::from(end.clone())),
        Arc::new(UInt64Array::from(end)),
        Arc::new(gaps),
        Arc::new(UInt32Array::from(vec![64u32; n])),
        Arc::new(UInt64Array::from(vec![1024u64; n])),
        Arc::new(UInt64Array::from(vec![64u64; n])),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            "usage", n,
        ))),
        Arc::new(UInt16Array::from(vec![200u16; n])),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        Arc::new(Float64Array::from(ttft)),
        Arc::new(Float64Array::from(latency)),
        Arc::new(Float64Array::from(itl)),
        Arc::new(UInt64Array::from(scheduled)),
        Arc::new(BooleanArray::from(vec![false; n])),
        // A server that reports cached tokens (half of each prompt); no sessions.
        Arc::new(UInt64Array::from(vec![512u64; n])),
        Arc::new(UInt64Array::from(vec![None::<u64>; n])),
        Arc::new(UInt32Array::from(vec![None::<u32>; n])),
    ];
    RecordBatch::try_new(records_schema(), columns).expect("batch")
}

fn bench(c: &mut Criterion) {
    // `cargo test --all-targets` runs benches once as a smoke test: keep that small.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("ANALYTICS_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 100_000 } else { 10_000_000 });
    let b = batch(n);
    let ms = std::time::Duration::from_millis;
    let slo = Slo::new(Some(ms(40)), Some(ms(11)), None);
    let mut g = c.benchmark_group("analytics");
    g.sample_size(10);
    g.bench_function(format!("cell_stats_{n}_records"), |bench| {
        bench.iter(|| CellStats::of_batch(&b, &slo).expect("stats"))
    });
    // The same records as a closed loop's: no schedule, so no lag distributions.
    let mut columns = b.columns().to_vec();
    let at = b.schema().index_of("scheduled_ns").expect("scheduled_ns");
    columns[at] = Arc::new(UInt64Array::from(vec![None::<u64>; n]));
    let closed = RecordBatch::try_new(b.schema(), columns).expect("closed-loop batch");
    g.bench_function(format!("cell_stats_{n}_records_closed_loop"), |bench| {
        bench.iter(|| CellStats::of_batch(&closed, &slo).expect("stats"))
    });
    let values: Vec<f64> = harness_analytics::table::float_column(&b, "ttft_ms")
        .into_iter()
        .flatten()
        .collect();
    g.bench_function(format!("distribution_{n}_values"), |bench| {
        bench.iter(|| Distribution::of(&values).expect("distribution"))
    });
    g.bench_function(format!("sort_baseline_{n}_values"), |bench| {
        bench.iter(|| {
            let mut v = values.clone();
            v.sort_unstable_by(f64::total_cmp);
            v[v.len() / 2]
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
