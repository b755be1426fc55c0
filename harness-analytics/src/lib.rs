//! Metric statistics of harness.
//!
//! Now: [`Distribution`], the summary of one metric over a cell's requests (count, min, max,
//! mean, standard deviation and exact percentiles). Next (its own issue): versioned Arrow
//! schemas, parquet, charts, reports and run comparison.

use serde::{Deserialize, Serialize};

/// The percentiles every distribution reports.
pub const PERCENTILES: [u8; 9] = [1, 5, 10, 25, 50, 75, 90, 95, 99];

/// The summary of one metric over many values.
///
/// Percentiles are exact, with linear interpolation between the closest ranks (numpy's
/// default, which aiperf uses): for `q` in 0..=100 the value at rank `q/100 * (n - 1)`. The
/// standard deviation is the population one (divide by `n`), as numpy's `std`.
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

impl Distribution {
    /// Summarises `values`; NaN values are ignored. `None` when nothing is left.
    pub fn of(values: &mut Vec<f64>) -> Option<Self> {
        values.retain(|v| !v.is_nan());
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f64::total_cmp);
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        let percentiles = PERCENTILES
            .iter()
            .map(|&q| (q, percentile_sorted(values, f64::from(q))))
            .collect();
        Some(Distribution {
            count: n,
            min: values[0],
            max: values[n - 1],
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
        let d = Distribution::of(&mut vec![10.0, 2.0, 4.0, 1.0, 3.0]).expect("values");
        assert_eq!((d.count, d.min, d.max, d.mean), (5, 1.0, 10.0, 4.0));
        assert!((d.p(1).expect("p1") - 1.04).abs() < 1e-12);
        assert_eq!(d.p(50), Some(3.0));
        assert!((d.p(90).expect("p90") - 7.6).abs() < 1e-12);
        assert!((d.p(99).expect("p99") - 9.76).abs() < 1e-12);
        assert!((d.std - 10f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn empty_and_nan_only_inputs_have_no_distribution() {
        assert!(Distribution::of(&mut vec![]).is_none());
        assert!(Distribution::of(&mut vec![f64::NAN]).is_none());
        let d = Distribution::of(&mut vec![f64::NAN, 7.0]).expect("one value");
        assert_eq!((d.count, d.p(1), d.p(99)), (1, Some(7.0), Some(7.0)));
    }

    proptest! {
        #[test]
        fn percentiles_are_ordered_and_bounded(mut v in proptest::collection::vec(-1e6f64..1e6, 1..300)) {
            let d = Distribution::of(&mut v).expect("values");
            let mut last = d.min;
            for (_, p) in &d.percentiles {
                prop_assert!(*p >= last - 1e-9 && *p <= d.max + 1e-9);
                last = *p;
            }
            prop_assert!(d.mean >= d.min - 1e-9 && d.mean <= d.max + 1e-9);
        }
    }
}
