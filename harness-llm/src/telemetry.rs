//! [`Scraper`]: the server's Prometheus metrics scraped during a cell, on a thread of its
//! own so that a slow or dead target, or a large exposition to parse, never delays the load
//! generator's requests.

use std::time::Duration;

use futures::future::join_all;
use harness_analytics::telemetry::{ScrapeLog, TargetLog, expo};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use harness_core::{Error, Result};

/// One Prometheus endpoint to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScrapeTarget {
    /// Its name in the table and in notes.
    pub name: String,
    /// The URL of its metrics.
    pub url: String,
    /// Left out quietly when its first scrape fails (the deployment's own endpoint, which
    /// many servers do not have); a listed target that fails keeps being tried, each failure
    /// a gap.
    pub optional: bool,
}

impl ScrapeTarget {
    /// A target that is always scraped.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        ScrapeTarget {
            name: name.into(),
            url: url.into(),
            optional: false,
        }
    }

    /// This target, left out when its first scrape fails.
    #[must_use]
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
}

/// How to scrape.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScrapeConfig {
    /// The targets.
    pub targets: Vec<ScrapeTarget>,
    /// Time between scrapes.
    pub interval: Duration,
    /// The largest exposition read; a larger one is a gap.
    pub max_bytes: u64,
}

impl ScrapeConfig {
    /// Scrapes `targets` every `interval`, reading at most 16 MiB from each.
    pub fn new(targets: Vec<ScrapeTarget>, interval: Duration) -> Self {
        ScrapeConfig {
            targets,
            interval,
            max_bytes: 16 << 20,
        }
    }

    /// The time one scrape may take: twice the interval, from half a second to ten.
    fn timeout(&self) -> Duration {
        (self.interval * 2).clamp(Duration::from_millis(500), Duration::from_secs(10))
    }
}

/// Scraping under way. Dropping it stops the thread; [`Scraper::finish`] takes a last scrape
/// and returns everything.
#[derive(Debug)]
pub struct Scraper {
    stop: CancellationToken,
    result: Option<oneshot::Receiver<Vec<TargetLog>>>,
    started: Instant,
    interval: Duration,
    /// Optional targets left out, and why.
    left_out: Vec<(ScrapeTarget, String)>,
}

impl Scraper {
    /// Starts scraping on a thread of its own. Returns once every target was scraped once
    /// (the baseline the counters' increases are measured from), so load sent after this
    /// returns is counted in full. Optional targets whose first scrape failed are left out
    /// ([`Scraper::left_out`]); with none left, the scraper has nothing to do.
    ///
    /// # Errors
    /// When the thread or its HTTP client cannot be made.
    pub async fn start(cfg: ScrapeConfig) -> Result<Scraper> {
        // Trusting what the load's connections trust.
        let https = cfg
            .targets
            .iter()
            .map(|t| t.url.as_str())
            .find(|u| u.starts_with("https://"));
        let client = crate::client::http_client(https.unwrap_or("http://"), cfg.timeout())
            .map_err(|e| e.at("telemetry"))?;
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (result_tx, result_rx) = oneshot::channel();
        let started = Instant::now();
        let (thread_stop, interval) = (stop.clone(), cfg.interval);
        std::thread::Builder::new()
            .name("harness-telemetry".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(scrape_loop(
                    cfg,
                    client,
                    started,
                    thread_stop,
                    ready_tx,
                    result_tx,
                ));
            })
            .map_err(|e| Error::failed_from("starting the telemetry thread", e))?;
        let left_out = match ready_rx.await {
            Ok(Ok(left_out)) => left_out,
            Ok(Err(e)) => return Err(Error::failed("telemetry", e)),
            Err(_) => return Err(Error::failed("telemetry", "the scraping thread ended")),
        };
        Ok(Scraper {
            stop,
            result: Some(result_rx),
            started,
            interval,
            left_out,
        })
    }

    /// The optional targets left out because their first scrape failed, with the reason.
    pub fn left_out(&self) -> &[(ScrapeTarget, String)] {
        &self.left_out
    }

    /// Stops scraping after one last scrape of every target, and returns the scrapes with
    /// their times counted from `epoch` (the cell's; scrapes before it are negative).
    ///
    /// # Errors
    /// When the scraping thread died.
    pub async fn finish(mut self, epoch: Instant) -> Result<ScrapeLog> {
        self.stop.cancel();
        let rx = self
            .result
            .take()
            .ok_or_else(|| Error::failed("telemetry", "finished twice"))?;
        let mut targets = rx
            .await
            .map_err(|_| Error::failed("telemetry", "the scraping thread ended early"))?;
        let shift = signed_ns(epoch, self.started);
        for t in &mut targets {
            t.shift_time(-shift);
        }
        Ok(ScrapeLog {
            interval: self.interval,
            targets,
        })
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `a - b` in nanoseconds, signed.
fn signed_ns(a: Instant, b: Instant) -> i64 {
    if a >= b {
        i64::try_from((a - b).as_nanos()).unwrap_or(i64::MAX)
    } else {
        -i64::try_from((b - a).as_nanos()).unwrap_or(i64::MAX)
    }
}

type Ready = oneshot::Sender<std::result::Result<Vec<(ScrapeTarget, String)>, String>>;

async fn scrape_loop(
    cfg: ScrapeConfig,
    client: reqwest::Client,
    started: Instant,
    stop: CancellationToken,
    ready: Ready,
    result: oneshot::Sender<Vec<TargetLog>>,
) {
    let mut logs: Vec<(ScrapeTarget, TargetLog)> = cfg
        .targets
        .iter()
        .map(|t| (t.clone(), TargetLog::new(&t.name, &t.url)))
        .collect();
    // The baseline.
    scrape_all(&client, &mut logs, started, cfg.max_bytes).await;
    let mut left_out = Vec::new();
    logs.retain(|(target, log)| {
        let failed = log.scrapes().first().and_then(|s| s.outcome.as_ref().err());
        match failed {
            Some(why) if target.optional => {
                left_out.push((target.clone(), why.clone()));
                false
            }
            _ => true,
        }
    });
    let any = !logs.is_empty();
    if ready.send(Ok(left_out)).is_err() || !any {
        let _ = result.send(Vec::new());
        return;
    }
    let mut ticks = tokio::time::interval_at(started + cfg.interval, cfg.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => scrape_all(&client, &mut logs, started, cfg.max_bytes).await,
            () = stop.cancelled() => break,
        }
    }
    // The last scrape, after the last response: the counters' final values.
    scrape_all(&client, &mut logs, started, cfg.max_bytes).await;
    let _ = result.send(logs.into_iter().map(|(_, log)| log).collect());
}

/// Scrapes every target at once and records each answer at the time it arrived.
async fn scrape_all(
    client: &reqwest::Client,
    logs: &mut [(ScrapeTarget, TargetLog)],
    started: Instant,
    max_bytes: u64,
) {
    let answers = join_all(logs.iter().map(|(t, _)| async {
        let got = fetch(client, &t.url, max_bytes).await;
        (signed_ns(Instant::now(), started), got)
    }))
    .await;
    for ((_, log), (t_ns, got)) in logs.iter_mut().zip(answers) {
        match got {
            Ok(text) => {
                let parsed = expo::parse(&text);
                if parsed.samples.is_empty() {
                    log.gap(t_ns, "the answer holds no Prometheus samples");
                    for e in &parsed.errors {
                        log.warn(format!("{}: {e}", log.url));
                    }
                } else {
                    log.record(t_ns, parsed);
                }
            }
            Err(why) => log.gap(t_ns, why),
        }
    }
}

/// The exposition at `url`, read up to `max_bytes`.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    max_bytes: u64,
) -> std::result::Result<String, String> {
    let mut resp = client
        .get(url)
        .header("accept", "text/plain;version=0.0.4")
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let too_big =
        || format!("the exposition is larger than {max_bytes} bytes (telemetry.max_bytes)");
    if resp.content_length().is_some_and(|n| n > max_bytes) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if (body.len() + chunk.len()) as u64 > max_bytes {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "the exposition is not UTF-8 text".to_owned())
}

/// A reqwest error with its causes (the bare error says only "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
