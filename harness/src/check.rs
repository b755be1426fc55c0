//! `http-check`: the default per-cell step until the load generator lands. It checks that
//! the endpoint answers at the cell's concurrency; it measures nothing about the model and
//! says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use harness_core::backend::http_get_status;
use harness_core::pipeline::{StepFactory, StepSource};
use harness_core::{Endpoint, Error, Result, Step, StepContext, StepOutput};
use serde::Deserialize;

/// The most requests one check sends at once.
const MAX_PARALLEL: i64 = 256;

#[derive(Debug, Clone)]
pub(crate) struct HttpCheckStep {
    name: String,
    path: String,
    timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_timeout_s")]
    timeout_s: f64,
}

fn default_path() -> String {
    "/".into()
}
fn default_timeout_s() -> f64 {
    10.0
}

impl HttpCheckStep {
    pub(crate) fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        HttpCheckStep {
            name: name.into(),
            path: path.into(),
            timeout: Duration::from_secs(10),
        }
    }

    pub(crate) fn factory() -> StepFactory {
        Arc::new(|spec, source: &StepSource<'_>| {
            let p: Params = source.params(spec)?;
            if !p.path.starts_with('/') {
                return Err(source.error(
                    "path",
                    format!("expected a path starting with `/`, got `{}`", p.path),
                ));
            }
            if !(p.timeout_s.is_finite() && p.timeout_s > 0.0 && p.timeout_s <= 3600.0) {
                return Err(source.error(
                    "timeout_s",
                    format!("expected seconds in (0, 3600], got {}", p.timeout_s),
                ));
            }
            let mut step = HttpCheckStep::new(spec.step_name(), p.path);
            step.timeout = Duration::from_secs_f64(p.timeout_s);
            Ok(Arc::new(step) as Arc<dyn Step>)
        })
    }
}

#[async_trait]
impl Step for HttpCheckStep {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let endpoint = cx.resources().get::<Endpoint>().ok_or_else(|| {
            Error::failed(
                "http-check",
                "no endpoint: the deployment did not report one",
            )
        })?;
        let n = cx
            .cell()
            .and_then(|c| c.param("concurrency"))
            .and_then(|v| v.as_i64())
            .unwrap_or(1)
            .clamp(1, MAX_PARALLEL);
        let url = endpoint.url(&self.path);
        let start = Instant::now();
        let checks = (0..n).map(|_| async {
            match tokio::time::timeout(self.timeout, http_get_status(&url)).await {
                Ok(Ok(s)) if (200..300).contains(&s) => Ok(()),
                Ok(Ok(s)) => Err(format!("HTTP {s}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            }
        });
        let results = tokio::select! {
            r = futures::future::join_all(checks) => r,
            () = cx.cancel().cancelled() => return Err(Error::Cancelled { what: "http-check".into() }),
        };
        let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if let Some(first) = failed.first() {
            return Err(Error::failed(
                format!("GET {url}"),
                format!(
                    "{} of {n} parallel requests failed; first: {first}",
                    failed.len()
                ),
            ));
        }
        Ok(StepOutput::new()
            .metric("check.requests_ok", n as f64)
            .metric("check.wall_s", start.elapsed().as_secs_f64())
            .note("http-check: a connectivity check, not a benchmark"))
    }
}
