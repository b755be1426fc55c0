//! The scheduler: closed loop at a fixed concurrency, or open loop at a request rate
//! (Poisson or constant arrivals, optionally capped in concurrency), for a number of requests
//! or a duration, with warmup requests flagged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use harness_core::config::Arrival;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Record};
use crate::clock::Clock;
use crate::prompts::PromptSynth;
use crate::workload::{Workload, mix};

/// What one cell sends.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoadSpec {
    /// Requests in flight (closed loop), or the cap in open loop.
    pub concurrency: Option<u32>,
    /// Requests per second (open loop).
    pub rate: Option<f64>,
    /// Arrival pattern in open loop.
    pub arrival: Arrival,
    /// Measured requests (after warmup); with `duration`, whichever ends first.
    pub requests: Option<u64>,
    /// Measured duration.
    pub duration: Option<Duration>,
    /// Gradual start: closed-loop clients start evenly spread over it; an open loop's rate
    /// rises linearly from 0 to `rate` over it.
    pub ramp: Option<Duration>,
    /// Warmup requests, sent first.
    pub warmup: u64,
    /// Input tokens per request.
    pub isl: u32,
    /// Output tokens asked for.
    pub osl: u32,
    /// Seed for prompts and arrivals (the same for every client of a cell: see `shard`).
    pub seed: u64,
    /// Standard deviation of per-request ISL around `isl` (0: every request exactly `isl`).
    pub isl_stddev: f64,
    /// Standard deviation of per-request OSL around `osl`.
    pub osl_stddev: f64,
    /// Prompts from a dataset instead of synthetic ones.
    pub dataset: Option<Arc<Dataset>>,
    /// What the requests are: synthetic (or the dataset's) by default.
    pub workload: Workload,
    /// This client's share when several clients send a cell's load together; together
    /// they send what one client would. A workload of items (a trace's requests,
    /// conversations, synthetic sessions: [`Workload::shared_by_item`]) is shared item by item:
    /// this client sends the items whose index modulo `count` is its `index`, and
    /// `requests` and `warmup` count them all. Any other workload is shared by counts: the
    /// caller gives this client's part of `concurrency`, `rate`, `requests` and `warmup`,
    /// and its request `k` is the cell's request `k * count + index`, so prompts and
    /// shared prefixes are the cell's. Each client draws its own arrivals.
    pub shard: Option<harness_core::Shard>,
}

/// Prompts read from a JSON-lines file: `{"prompt": "...", "output_tokens": 128}` per line.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    entries: Vec<(String, Option<u32>)>,
}

impl Dataset {
    /// Reads a JSON-lines file (blocking).
    ///
    /// # Errors
    /// [`Error::Invalid`](crate::Error::Invalid) naming the file and line of the first bad
    /// entry, or an empty file; [`Error::Read`](crate::Error::Read) when it cannot be read.
    pub fn load(path: &std::path::Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses JSON lines; `source` names them in errors. Blank lines are skipped.
    ///
    /// # Errors
    /// As [`Dataset::load`].
    pub fn parse(text: &str, source: &str) -> crate::Result<Self> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Line {
            prompt: String,
            #[serde(default, alias = "max_tokens")]
            output_tokens: Option<u32>,
        }
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let l: Line = serde_json::from_str(line)
                .map_err(|e| crate::Error::invalid(format!("{source}:{}", i + 1), e.to_string()))?;
            if l.output_tokens == Some(0) {
                return Err(crate::Error::invalid(
                    format!("{source}:{}", i + 1),
                    "output_tokens must be at least 1",
                ));
            }
            entries.push((l.prompt, l.output_tokens));
        }
        if entries.is_empty() {
            return Err(crate::Error::invalid(source, "no prompts"));
        }
        Ok(Dataset { entries })
    }

    /// The prompts in order, each with its own output length when the file gives one.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Option<u32>)> {
        self.entries.iter().map(|(p, o)| (p.as_str(), *o))
    }

    /// How many prompts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl LoadSpec {
    /// A closed-loop spec.
    pub fn closed(concurrency: u32, requests: u64, isl: u32, osl: u32) -> Self {
        LoadSpec {
            concurrency: Some(concurrency),
            rate: None,
            arrival: Arrival::Poisson,
            requests: Some(requests),
            duration: None,
            ramp: None,
            warmup: 0,
            isl,
            osl,
            seed: 0,
            isl_stddev: 0.0,
            osl_stddev: 0.0,
            dataset: None,
            workload: Workload::Synthetic,
            shard: None,
        }
    }

    /// Whether item `index` of a replayed workload is this client's to send.
    pub(crate) fn owns(&self, index: u64) -> bool {
        self.shard
            .is_none_or(|s| index % u64::from(s.count.max(1)) == u64::from(s.index))
    }

    /// The cell's index of this client's request `index` (see [`LoadSpec::shard`]).
    fn cell_index(&self, index: u64) -> u64 {
        match self.shard {
            Some(s) if !self.workload.shared_by_item() => {
                index * u64::from(s.count.max(1)) + u64::from(s.index)
            }
            _ => index,
        }
    }

    /// The seed of this client's arrival draws (`salt` tells loops apart): the clients of a
    /// cell draw apart, or they would all send at the same instants.
    pub(crate) fn arrival_seed(&self, salt: u64) -> u64 {
        self.seed ^ salt ^ self.shard.map_or(0, |s| mix(u64::from(s.index)))
    }

    /// Request `index`'s prompt, its input token count as built (the fallback when the server
    /// reports no usage), and the output tokens to ask for.
    pub fn request(&self, synth: &PromptSynth, index: u64) -> (String, u64, u32) {
        let index = self.cell_index(index);
        let seed = prompt_seed(self.seed, index);
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x005E_ED0F_1E57);
        let osl = normal(&mut rng, self.osl, self.osl_stddev);
        if let Some(d) = &self.dataset {
            let (prompt, out) = &d.entries[(index % d.entries.len() as u64) as usize];
            let words = prompt.split_whitespace().count() as u64;
            return (prompt.clone(), words, out.unwrap_or(osl));
        }
        let isl = normal(&mut rng, self.isl, self.isl_stddev);
        match &self.workload {
            Workload::SharedPrefix(w) => {
                let (prompt, n) = w.prompt(synth, self.seed, index, isl);
                return (prompt, n, osl);
            }
            Workload::Trace(t) => {
                if let Some(request) = t.prompt(synth, self.seed, index) {
                    return request;
                }
            }
            _ => {}
        }
        (synth.prompt(isl, seed), u64::from(isl), osl)
    }

    /// Measured requests when neither a count nor a duration is given: four rounds of the
    /// concurrency, and at least 100 (vLLM's bench defaults to 1000 prompts; this keeps
    /// default sweeps short).
    pub fn default_requests(concurrency: Option<u32>) -> u64 {
        (u64::from(concurrency.unwrap_or(1)) * 4).max(100)
    }

    /// Requests to send, warmup included; `None`: until the duration ends.
    pub(crate) fn total(&self) -> Option<u64> {
        let planned = match (self.requests, self.duration) {
            (Some(n), _) => Some(self.warmup + n),
            (None, Some(_)) => None,
            (None, None) => Some(
                self.warmup
                    + match &self.workload {
                        // A trace's requests, or each conversation once.
                        Workload::Trace(t) => t.len() as u64,
                        Workload::Conversations(c) => {
                            c.items().iter().map(|c| c.turns.len() as u64).sum()
                        }
                        _ => Self::default_requests(self.concurrency),
                    },
            ),
        };
        match &self.workload {
            Workload::Trace(t) => Some(planned.unwrap_or(u64::MAX).min(t.len() as u64)),
            _ => planned,
        }
    }
}

/// A draw from a normal distribution with `mean` and `stddev`, rounded, at least 1
/// (Box-Muller; exactly `mean` when `stddev` is 0).
pub(crate) fn normal(rng: &mut SmallRng, mean: u32, stddev: f64) -> u32 {
    if stddev <= 0.0 {
        return mean;
    }
    let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (f64::from(mean) + z * stddev)
        .round()
        .clamp(1.0, f64::from(u32::MAX)) as u32
}

/// The seed of request `index`'s prompt.
pub(crate) fn prompt_seed(seed: u64, index: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index
}

/// When request `k` of an open loop is due, in seconds from the start, given the cumulative
/// arrival count `lambda` it was drawn at (a unit-rate process: `k` for constant arrivals, a
/// sum of exponential gaps for Poisson). Without a ramp that is `lambda / rate`; with one the
/// rate rises linearly over `ramp` seconds, so the arrivals up to `t` are `rate t^2 / 2 ramp`
/// and the inverse is taken (time rescaling keeps the Poisson process Poisson).
fn arrival_time(lambda: f64, rate: f64, ramp: f64) -> f64 {
    if ramp <= 0.0 {
        return lambda / rate;
    }
    let during = rate * ramp / 2.0;
    if lambda <= during {
        (2.0 * ramp * lambda / rate).sqrt()
    } else {
        ramp + (lambda - during) / rate
    }
}

/// The gap to the next arrival of a unit-rate process: 1 for constant arrivals, an
/// exponential draw for Poisson ones.
pub(crate) fn unit_gap(arrival: Arrival, rng: &mut SmallRng) -> f64 {
    match arrival {
        Arrival::Constant => 1.0,
        _ => -(1.0 - rng.random::<f64>()).ln(),
    }
}

/// Waits until `at`, then for a slot of the concurrency cap when there is one: `None` when
/// `cancel` fires first, else the slot (held while the arrival's work runs).
pub(crate) async fn arrive(
    clock: &Clock,
    at: Instant,
    cap: Option<&Arc<Semaphore>>,
    cancel: &CancellationToken,
) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
    tokio::select! {
        () = clock.sleep_until(at) => {}
        () = cancel.cancelled() => return None,
    }
    match cap {
        Some(sem) => tokio::select! {
            p = sem.clone().acquire_owned() => Some(p.ok()),
            () = cancel.cancelled() => None,
        },
        None => Some(None),
    }
}

/// Sends the cell's load and returns every record (warmup included), in index order.
/// When `cancel` fires it stops sending, abandons the requests in flight (they are not
/// recorded) and returns the records of those that finished; the caller reports the cell
/// as cancelled.
pub async fn run(
    client: &Client,
    synth: &PromptSynth,
    spec: &LoadSpec,
    cancel: &CancellationToken,
) -> Vec<Record> {
    run_at(client, synth, spec, Instant::now(), cancel).await
}

/// As [`run`], with the cell's epoch given (now, or just past): records count their times
/// from it, so that other measurements of the cell (the server's scrapes) can share its
/// clock.
pub async fn run_at(
    client: &Client,
    synth: &PromptSynth,
    spec: &LoadSpec,
    epoch: Instant,
    cancel: &CancellationToken,
) -> Vec<Record> {
    let total = spec.total();
    // A duration too long to add to the clock has no deadline in practice.
    let deadline = spec.duration.and_then(|d| epoch.checked_add(d));
    let ramp = spec.ramp.unwrap_or_default();
    // Arrivals and ramp steps need better than tokio's millisecond timer.
    let clock = Arc::new(Clock::default());
    if spec.workload.is_sessions() {
        return crate::sessions::run(client, synth, spec, epoch, clock, cancel).await;
    }
    let trace = match &spec.workload {
        Workload::Trace(t) => Some(t.clone()),
        _ => None,
    };
    let synth = Arc::new(synth.clone());
    let mut tasks: JoinSet<Vec<Record>> = JoinSet::new();
    let one = move |index: u64, client: Client, synth: Arc<PromptSynth>, spec: LoadSpec| async move {
        let (prompt, isl, osl) = spec.request(&synth, index);
        client
            .send(index, index < spec.warmup, prompt, isl, osl, epoch)
            .await
    };
    match spec.rate.or(trace.as_ref().map(|_| 0.0)) {
        None => {
            let next = Arc::new(AtomicU64::new(0));
            let workers = spec.concurrency.unwrap_or(1).max(1);
            for w in 0..workers {
                let (client, synth, spec, next, clock) = (
                    client.clone(),
                    synth.clone(),
                    spec.clone(),
                    next.clone(),
                    clock.clone(),
                );
                // With a ramp, worker `w` starts at `w / workers` of it.
                let Some(begin) =
                    epoch.checked_add(ramp.mul_f64(f64::from(w) / f64::from(workers)))
                else {
                    continue; // a ramp longer than the clock can count: never starts
                };
                tasks.spawn(async move {
                    clock.sleep_until(begin).await;
                    let mut out = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if total.is_some_and(|t| index >= t)
                            || deadline.is_some_and(|d| Instant::now() >= d)
                        {
                            break;
                        }
                        out.push(one(index, client.clone(), synth.clone(), spec.clone()).await);
                    }
                    out
                });
            }
        }
        Some(rate) => {
            let cap = spec
                .concurrency
                .map(|c| Arc::new(Semaphore::new(c as usize)));
            let mut rng = SmallRng::seed_from_u64(spec.arrival_seed(0xA11E));
            let mut at = epoch;
            let mut lambda = 0.0f64;
            let mut index = 0u64;
            loop {
                if let Some(t) = &trace {
                    // The trace's own time, from the epoch.
                    match t.due(index).and_then(|d| epoch.checked_add(d)) {
                        Some(due) => at = due,
                        None => break,
                    }
                } else if index > 0 {
                    lambda += unit_gap(spec.arrival, &mut rng);
                    let after = arrival_time(lambda, rate, ramp.as_secs_f64());
                    match Duration::try_from_secs_f64(after)
                        .ok()
                        .and_then(|d| epoch.checked_add(d))
                    {
                        Some(t) => at = t,
                        None => break, // never due
                    }
                }
                if total.is_some_and(|t| index >= t)
                    || deadline.is_some_and(|d| at >= d)
                    || cancel.is_cancelled()
                {
                    break;
                }
                // Another client's request of the trace.
                if trace.is_some() && !spec.owns(index) {
                    index += 1;
                    continue;
                }
                let Some(permit) = arrive(&clock, at, cap.as_ref(), cancel).await else {
                    break;
                };
                let (client, synth, spec) = (client.clone(), synth.clone(), spec.clone());
                // The arrival's intended time: a later start is queueing in the client.
                let scheduled = u64::try_from(at.duration_since(epoch).as_nanos()).ok();
                tasks.spawn(async move {
                    let mut rec = one(index, client, synth, spec).await;
                    rec.scheduled_ns = scheduled;
                    drop(permit);
                    vec![rec]
                });
                index += 1;
            }
        }
    }
    let mut records = Vec::new();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(mut recs)) => records.append(&mut recs),
                Some(Err(e)) => tracing::warn!(error = %e, "a request task failed"),
                None => break,
            },
            () = cancel.cancelled() => {
                tasks.abort_all();
                while let Some(joined) = tasks.join_next().await {
                    if let Ok(mut recs) = joined {
                        records.append(&mut recs);
                    }
                }
                break;
            }
        }
    }
    records.sort_by_key(|r| r.index);
    records
}

#[cfg(test)]
mod tests {
    use super::arrival_time;

    #[test]
    fn a_ramped_rate_reaches_the_target_where_the_ramp_ends() {
        // 10/s over a 2 s ramp: 10 arrivals by then (the area of the triangle), then 10/s.
        assert_eq!(arrival_time(0.0, 10.0, 2.0), 0.0);
        assert!((arrival_time(10.0, 10.0, 2.0) - 2.0).abs() < 1e-12);
        assert!((arrival_time(20.0, 10.0, 2.0) - 3.0).abs() < 1e-12);
        // Half the ramp's arrivals come in its last 29%: t = 2 sqrt(1/2).
        assert!((arrival_time(5.0, 10.0, 2.0) - 2.0 * 0.5f64.sqrt()).abs() < 1e-12);
        // No ramp: lambda / rate.
        assert_eq!(arrival_time(7.0, 10.0, 0.0), 0.7);
        // Increasing everywhere.
        let mut last = -1.0;
        for k in 0..400 {
            let t = arrival_time(f64::from(k) * 0.1, 10.0, 2.0);
            assert!(t > last, "{k}");
            last = t;
        }
    }
}
