//! [`Distribution`]: count, min, max, mean, standard deviation and exact percentiles.

use serde::{Deserialize, Serialize};

/// The percentiles every distribution reports.
pub const PERCENTILES: [u8; 9] = [1, 5, 10, 25, 50, 75, 90, 95, 99];

/// Below this many values, sorting a copy is as quick as anything cleverer.
const SORT_BELOW: usize = 1 << 14;
/// Histogram buckets for large inputs: the top bits of an order-preserving key.
const BUCKET_BITS: u32 = 20;

/// The summary of one metric over many values.
///
/// Percentiles are exact, with linear interpolation between the closest ranks (numpy's
/// default, which aiperf uses): for `q` in 0..=100 the value at rank `q/100 * (n - 1)`. The
/// standard deviation is the population one (divide by `n`), as numpy's `std`.
///
/// Large inputs are not sorted: one pass counts values into 2^20 buckets of an
/// order-preserving key, a second pass gathers only the buckets that hold a wanted rank, and
/// a selection inside each finds the exact value. Ten million values take tens of
/// milliseconds (see `docs/PERFORMANCE.md`).
///
/// ```
/// use harness_analytics::Distribution;
/// let d = Distribution::of(&[10.0, 2.0, 4.0, 1.0, 3.0]).expect("values");
/// assert_eq!(d.p(50), Some(3.0));
/// assert!((d.p(90).unwrap_or_default() - 7.6).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Distribution {
    /// How many values.
    pub count: usize,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// The mean.
    pub mean: f64,
    /// The population standard deviation.
    pub std: f64,
    /// `(q, value)` for each q in [`PERCENTILES`].
    pub percentiles: Vec<(u8, f64)>,
}

/// A key whose unsigned order is the numeric order of the floats (for non-NaN values).
fn key(v: f64) -> u64 {
    let b = v.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

/// The ranks (0-based) that percentile `q` interpolates between, and the weight of the upper.
fn ranks(q: u8, n: usize) -> (usize, usize, f64) {
    let pos = f64::from(q) / 100.0 * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (pos.ceil() as usize).min(n - 1);
    (lo, hi, pos - lo as f64)
}

impl Distribution {
    /// Summarises `values`; NaN values are ignored. `None` when nothing is left.
    pub fn of(values: &[f64]) -> Option<Self> {
        // Large inputs: one pass counts values into buckets and takes n, sum, min and max.
        let mut hist = (values.len() >= SORT_BELOW && values.len() <= u32::MAX as usize)
            .then(|| vec![0u32; 1 << BUCKET_BITS]);
        let shift = 64 - BUCKET_BITS;
        let mut n = 0usize;
        let mut sum = 0.0;
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for &v in values {
            if !v.is_nan() {
                n += 1;
                sum += v;
                min = min.min(v);
                max = max.max(v);
                if let Some(h) = hist.as_mut() {
                    h[(key(v) >> shift) as usize] += 1;
                }
            }
        }
        if n == 0 {
            return None;
        }
        if min == max {
            // One value repeated (token counts often are): nothing to select.
            return Some(Distribution {
                count: n,
                min,
                max,
                mean: min,
                std: 0.0,
                percentiles: PERCENTILES.iter().map(|&q| (q, min)).collect(),
            });
        }
        let mean = sum / n as f64;
        let var = values
            .iter()
            .filter(|v| !v.is_nan())
            .map(|v| (v - mean) * (v - mean))
            .sum::<f64>()
            / n as f64;
        let wanted: Vec<(u8, usize, usize, f64)> = PERCENTILES
            .iter()
            .map(|&q| {
                let (lo, hi, w) = ranks(q, n);
                (q, lo, hi, w)
            })
            .collect();
        let mut rank_list: Vec<usize> = wanted.iter().flat_map(|w| [w.1, w.2]).collect();
        rank_list.sort_unstable();
        rank_list.dedup();
        let at = match hist {
            Some(counts) => select_ranks(values, &counts, &rank_list),
            None => {
                let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
                sorted.sort_unstable_by(f64::total_cmp);
                rank_list.iter().map(|&r| (r, sorted[r])).collect()
            }
        };
        let value_at = |r: usize| {
            at.iter()
                .find(|(k, _)| *k == r)
                .map_or(f64::NAN, |(_, v)| *v)
        };
        let percentiles = wanted
            .iter()
            .map(|&(q, lo, hi, w)| {
                let (a, b) = (value_at(lo), value_at(hi));
                (q, if lo == hi { a } else { a + (b - a) * w })
            })
            .collect();
        Some(Distribution {
            count: n,
            min,
            max,
            mean,
            std: var.sqrt(),
            percentiles,
        })
    }

    /// Percentile `q` (one of [`PERCENTILES`]).
    pub fn p(&self, q: u8) -> Option<f64> {
        self.percentiles
            .iter()
            .find(|(k, _)| *k == q)
            .map(|(_, v)| *v)
    }

    /// A statistic by name: `count`, `min`, `max`, `mean`, `std`, or `p1` ... `p99`.
    pub fn stat(&self, name: &str) -> Option<f64> {
        match name {
            "count" => Some(self.count as f64),
            "min" => Some(self.min),
            "max" => Some(self.max),
            "mean" => Some(self.mean),
            "std" => Some(self.std),
            p => p.strip_prefix('p')?.parse().ok().and_then(|q| self.p(q)),
        }
    }

    /// Flattened as `(name, value)` pairs: `min`, `max`, `mean`, `std`, `p1` ... `p99`.
    pub fn fields(&self) -> Vec<(String, f64)> {
        let mut out = vec![
            ("min".to_owned(), self.min),
            ("max".to_owned(), self.max),
            ("mean".to_owned(), self.mean),
            ("std".to_owned(), self.std),
        ];
        out.extend(self.percentiles.iter().map(|(q, v)| (format!("p{q}"), *v)));
        out
    }
}

/// The names [`Distribution::stat`] knows, in column order.
pub const STATS: [&str; 14] = [
    "count", "min", "max", "mean", "std", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95",
    "p99",
];

/// The values at `ranks` (sorted, 0-based, among the non-NaN values), given the bucket
/// counts of `values`: only the buckets holding a wanted rank are gathered.
fn select_ranks(values: &[f64], counts: &[u32], ranks: &[usize]) -> Vec<(usize, f64)> {
    let shift = 64 - BUCKET_BITS;
    // For each rank: its bucket and its offset inside the bucket.
    let mut located: Vec<(usize, usize, usize)> = Vec::with_capacity(ranks.len());
    let mut before = 0usize;
    let mut next = 0;
    for (bucket, &c) in counts.iter().enumerate() {
        let c = c as usize;
        while next < ranks.len() && ranks[next] < before + c {
            located.push((ranks[next], bucket, ranks[next] - before));
            next += 1;
        }
        before += c;
        if next == ranks.len() {
            break;
        }
    }
    // Gather the values of the wanted buckets only.
    let mut slot = vec![u8::MAX; 1 << BUCKET_BITS];
    let mut buckets: Vec<Vec<f64>> = Vec::new();
    for &(_, b, _) in &located {
        if slot[b] == u8::MAX {
            slot[b] = buckets.len() as u8;
            buckets.push(Vec::with_capacity(counts[b] as usize));
        }
    }
    for &v in values {
        if !v.is_nan() {
            let s = slot[(key(v) >> shift) as usize];
            if s != u8::MAX {
                buckets[s as usize].push(v);
            }
        }
    }
    // Within each bucket, select the wanted offsets in increasing order, each in the part
    // right of the previous one, so a bucket is partitioned about once in all.
    let mut out = Vec::with_capacity(located.len());
    let mut i = 0;
    while i < located.len() {
        let b = located[i].1;
        let bucket = &mut buckets[slot[b] as usize];
        let (lo, hi) = bucket
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, z), v| {
                (a.min(*v), z.max(*v))
            });
        let mut done = 0usize; // values left of this index are placed
        while i < located.len() && located[i].1 == b {
            let (rank, _, offset) = located[i];
            let v = if lo == hi {
                lo // one value repeated (token counts often are)
            } else {
                let (_, v, _) =
                    bucket[done..].select_nth_unstable_by(offset - done, f64::total_cmp);
                let v = *v;
                done = offset + 1;
                v
            };
            out.push((rank, v));
            i += 1;
        }
    }
    out
}

/// Percentile `q` (0 to 100) of sorted, non-empty `values`, linearly interpolated.
pub fn percentile_sorted(values: &[f64], q: f64) -> f64 {
    let n = values.len();
    if n == 1 {
        return values[0];
    }
    let rank = (q / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    values[lo] + (values[hi] - values[lo]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_numpy_on_a_known_sample() {
        // numpy: np.percentile([1,2,3,4,10], [1,50,90,99]) = [1.04, 3.0, 7.6, 9.76]; std = 3.1623
        let d = Distribution::of(&[10.0, 2.0, 4.0, 1.0, 3.0]).expect("values");
        assert_eq!((d.count, d.min, d.max, d.mean), (5, 1.0, 10.0, 4.0));
        assert!((d.p(1).expect("p1") - 1.04).abs() < 1e-12);
        assert_eq!(d.p(50), Some(3.0));
        assert!((d.p(90).expect("p90") - 7.6).abs() < 1e-12);
        assert!((d.p(99).expect("p99") - 9.76).abs() < 1e-12);
        assert!((d.std - 10f64.sqrt()).abs() < 1e-12);
        assert_eq!(d.stat("p90"), d.p(90));
        assert_eq!(d.stat("count"), Some(5.0));
        assert_eq!(d.stat("p42"), None);
    }

    #[test]
    fn empty_and_nan_only_inputs_have_no_distribution() {
        assert!(Distribution::of(&[]).is_none());
        assert!(Distribution::of(&[f64::NAN]).is_none());
        let d = Distribution::of(&[f64::NAN, 7.0]).expect("one value");
        assert_eq!((d.count, d.p(1), d.p(99)), (1, Some(7.0), Some(7.0)));
    }

    /// The bucketed selection agrees exactly with sorting, on large inputs with duplicates,
    /// negatives, NaNs and values crowded into one bucket.
    #[test]
    fn bucketed_selection_equals_sorting_on_large_inputs() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..4 {
            let n = SORT_BELOW * 3 + case * 1001;
            let values: Vec<f64> = (0..n)
                .map(|i| match (case, i % 97) {
                    (_, 0) => f64::NAN,
                    (0, _) => (next() % 1_000_000) as f64 / 7.0 - 50_000.0,
                    (1, _) => 20.0 + (next() % 1000) as f64 * 1e-9, // one crowded bucket
                    (2, _) => (next() % 5) as f64,                  // heavy duplicates
                    _ => f64::from_bits(next() >> 2),               // wide exponents
                })
                .collect();
            let fast = Distribution::of(&values).expect("values");
            let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
            sorted.sort_unstable_by(f64::total_cmp);
            assert_eq!(fast.count, sorted.len());
            for (q, v) in &fast.percentiles {
                let want = percentile_sorted(&sorted, f64::from(*q));
                assert_eq!(
                    v.to_bits(),
                    want.to_bits(),
                    "case {case} p{q}: {v} vs {want}"
                );
            }
            assert_eq!((fast.min, fast.max), (sorted[0], sorted[sorted.len() - 1]));
        }
    }

    proptest! {
        #[test]
        fn percentiles_are_ordered_and_bounded(v in proptest::collection::vec(-1e6f64..1e6, 1..300)) {
            let d = Distribution::of(&v).expect("values");
            let mut last = d.min;
            for (_, p) in &d.percentiles {
                prop_assert!(*p >= last - 1e-9 && *p <= d.max + 1e-9);
                last = *p;
            }
            prop_assert!(d.mean >= d.min - 1e-9 && d.mean <= d.max + 1e-9);
        }
    }
}
