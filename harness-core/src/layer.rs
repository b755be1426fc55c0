//! Cross-cutting behaviour that wraps a step: timeout, retry, tracing.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use harness_core::layer::{Layer, RetryLayer, TimeoutLayer, TraceLayer};
//! use harness_core::{Step, StepOutput, step_fn};
//!
//! let step: Arc<dyn Step> = Arc::new(step_fn("noop", |_| async { Ok(StepOutput::new()) }));
//! // Each attempt gets the timeout; transient failures are retried twice; all is traced.
//! let step = TimeoutLayer::new(Duration::from_secs(60)).layer(step);
//! let step = RetryLayer::new(2, Duration::from_secs(1)).layer(step);
//! let step = TraceLayer.layer(step);
//! assert_eq!(step.name(), "noop");
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::step::{Step, StepContext, StepOutput};

/// Wraps a step in another.
pub trait Layer: Send + Sync {
    /// Returns `inner` wrapped.
    fn layer(&self, inner: Arc<dyn Step>) -> Arc<dyn Step>;
}

/// Fails a step with [`Error::Timeout`] when one run takes longer than a limit.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    after: Duration,
}

impl TimeoutLayer {
    /// A limit of `after` per run.
    pub fn new(after: Duration) -> Self {
        TimeoutLayer { after }
    }
}

impl Layer for TimeoutLayer {
    fn layer(&self, inner: Arc<dyn Step>) -> Arc<dyn Step> {
        Arc::new(Timeout {
            inner,
            after: self.after,
        })
    }
}

#[derive(Debug)]
struct Timeout {
    inner: Arc<dyn Step>,
    after: Duration,
}

#[async_trait]
impl Step for Timeout {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        match tokio::time::timeout(self.after, self.inner.run(cx)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                what: format!("step `{}`", self.inner.name()),
                after: self.after,
            }),
        }
    }
}

/// Retries a step after [`Error::Transient`] failures, with exponential backoff; any other
/// error is returned at once.
#[derive(Debug, Clone, Copy)]
pub struct RetryLayer {
    retries: u32,
    backoff: Duration,
    max_backoff: Duration,
}

impl RetryLayer {
    /// Up to `retries` retries; the first wait is `backoff`, doubling up to 30 s.
    pub fn new(retries: u32, backoff: Duration) -> Self {
        RetryLayer {
            retries,
            backoff,
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Caps the wait between retries.
    #[must_use]
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }
}

impl Layer for RetryLayer {
    fn layer(&self, inner: Arc<dyn Step>) -> Arc<dyn Step> {
        Arc::new(Retry {
            inner,
            policy: *self,
        })
    }
}

#[derive(Debug)]
struct Retry {
    inner: Arc<dyn Step>,
    policy: RetryLayer,
}

#[async_trait]
impl Step for Retry {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let mut wait = self.policy.backoff;
        let mut attempt = 1;
        loop {
            let cx_n = cx.clone().with_attempt(attempt);
            match self.inner.run(&cx_n).await {
                Err(e) if e.is_transient() && attempt <= self.policy.retries => {
                    tracing::warn!(step = self.inner.name(), attempt, error = %e, retry_in = ?wait, "transient failure, retrying");
                    tokio::select! {
                        () = cx.cancel().cancelled() => return Err(e),
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(self.policy.max_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Runs a step inside a `tracing` span named `step` with the step, cell and stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl Layer for TraceLayer {
    fn layer(&self, inner: Arc<dyn Step>) -> Arc<dyn Step> {
        Arc::new(Traced { inner })
    }
}

struct Traced {
    inner: Arc<dyn Step>,
}

impl fmt::Debug for Traced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Traced").field(&self.inner).finish()
    }
}

#[async_trait]
impl Step for Traced {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let cell = cx.cell().map(|c| c.id.to_string()).unwrap_or_default();
        let span = tracing::info_span!("step", step = self.inner.name(), cell = %cell, stage = ?cx.stage(), run = cx.run().run_id());
        async {
            let start = std::time::Instant::now();
            let result = self.inner.run(cx).await;
            match &result {
                Ok(_) => tracing::debug!(elapsed = ?start.elapsed(), "step succeeded"),
                Err(e) => tracing::debug!(elapsed = ?start.elapsed(), error = %e, "step failed"),
            }
            result
        }
        .instrument(span)
        .await
    }
}
