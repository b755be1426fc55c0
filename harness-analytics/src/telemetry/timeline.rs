//! Per-second series of a cell, for charts: the client's (from its records) and the
//! server's (from `server_metrics.parquet`).

use arrow_array::RecordBatch;

use super::{QuantityKind, find_quantities, rows_of_batch};
use crate::Error;
use crate::record::Record;

/// One bucket of the client's time series.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ClientPoint {
    /// The bucket's start, seconds since the cell's epoch.
    pub t_s: f64,
    /// Requests in flight, averaged over the bucket's time.
    pub in_flight: f64,
    /// Requests that ended in the bucket (succeeded or not), per second.
    pub completions_per_s: f64,
    /// Output tokens per second: each request's tokens spread evenly from its first token to
    /// its last.
    pub output_tokens_per_s: f64,
}

/// The client's time series of `records` (warmup included) in buckets of `bucket_s`
/// seconds, from the cell's epoch to the last response's end. Empty without records or
/// with a bucket of no length.
///
/// ```
/// use harness_analytics::record::{Record, TokenSource};
/// use harness_analytics::telemetry::client_timeline;
/// // Two requests over the first second, ten tokens each, the second ending at 1.5 s.
/// let a = Record::succeeded(0, 0, 100_000_000, 1_000_000_000, 10, TokenSource::Usage);
/// let b = Record::succeeded(1, 0, 500_000_000, 1_500_000_000, 10, TokenSource::Usage);
/// let t = client_timeline(&[a, b], 1.0);
/// assert_eq!(t.len(), 2);
/// assert_eq!(t[0].in_flight, 2.0);
/// assert_eq!(t[1].in_flight, 0.5);
/// assert_eq!(t[1].completions_per_s, 2.0); // both end in [1, 2)
/// assert_eq!(t[0].output_tokens_per_s + t[1].output_tokens_per_s, 20.0);
/// ```
pub fn client_timeline(records: &[Record], bucket_s: f64) -> Vec<ClientPoint> {
    let Some(end) = records.iter().map(|r| r.end_ns).max() else {
        return Vec::new();
    };
    if bucket_s <= 0.0 || !bucket_s.is_finite() {
        return Vec::new();
    }
    let width = (bucket_s * 1e9) as u64;
    if width == 0 {
        return Vec::new();
    }
    let n = (end / width + 1) as usize;
    let mut busy = vec![0.0f64; n]; // request-nanoseconds
    let mut ends = vec![0u64; n];
    let mut tokens = vec![0.0f64; n];
    // `amount` spread evenly over [from, to), added to `into` bucket by bucket.
    let spread = |into: &mut [f64], from: u64, to: u64, amount: f64| {
        if to <= from {
            if let Some(b) = into.get_mut((from / width) as usize) {
                *b += amount;
            }
            return;
        }
        let per_ns = amount / (to - from) as f64;
        let mut t = from;
        while t < to {
            let b = t / width;
            let next = ((b + 1) * width).min(to);
            if let Some(slot) = into.get_mut(b as usize) {
                *slot += (next - t) as f64 * per_ns;
            }
            t = next;
        }
    };
    for r in records {
        spread(
            &mut busy,
            r.start_ns,
            r.end_ns,
            (r.end_ns - r.start_ns.min(r.end_ns)) as f64,
        );
        if let Some(e) = ends.get_mut((r.end_ns / width) as usize) {
            *e += 1;
        }
        if let (Some(first), Some(last)) = (r.first_token_ns, r.last_token_ns) {
            spread(&mut tokens, first, last, r.output_tokens as f64);
        }
    }
    (0..n)
        .map(|i| ClientPoint {
            t_s: i as f64 * bucket_s,
            in_flight: busy[i] / width as f64,
            completions_per_s: ends[i] as f64 / bucket_s,
            output_tokens_per_s: tokens[i] / bucket_s,
        })
        .collect()
}

/// One quantity of the server over a cell.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServerSeries {
    /// The quantity (see [`super::QUANTITIES`]).
    pub quantity: String,
    /// `(seconds since the cell's epoch, value)` per scrape; counters as rates per second.
    pub points: Vec<(f64, f64)>,
}

/// The server's time series of a stored `server_metrics.parquet`: each known gauge and
/// counter quantity (from the first target that has it).
///
/// # Errors
/// [`Error::InvalidInput`] when the table is not one of `server_metrics.parquet`.
pub fn server_timeline(batch: &RecordBatch) -> Result<Vec<ServerSeries>, Error> {
    let mut out: Vec<ServerSeries> = Vec::new();
    for target in rows_of_batch(batch)? {
        for f in find_quantities(&target.series, &target.rows, i64::MAX) {
            if matches!(f.quantity.kind, QuantityKind::Histogram)
                || f.points.is_empty()
                || out.iter().any(|s| s.quantity == f.quantity.name)
            {
                continue;
            }
            out.push(ServerSeries {
                quantity: f.quantity.name.to_owned(),
                points: f
                    .points
                    .iter()
                    .map(|(t, v)| (*t as f64 / 1e9, *v))
                    .collect(),
            });
        }
    }
    Ok(out)
}
