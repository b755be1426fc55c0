//! [`BenchmarkStep`]: one cell of load against the endpoint the deployment shared, with its
//! records and statistics stored.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use harness_core::pipeline::{StepFactory, StepSource};
use harness_core::{ArtifactStoreExt, Endpoint, Error, Result, Step, StepContext, StepOutput};
use serde::Deserialize;

use crate::client::{Client, ClientConfig, Record};
use crate::load::{self, LoadSpec};
use crate::prompts::{PromptSynth, TokenCounter};
use crate::workload::Workload;
use harness_analytics::CellStats;
use harness_analytics::io::to_parquet;
use harness_analytics::table::records_batch;
use harness_analytics::telemetry::{self, ClientCounts, Window};

use crate::telemetry::{ScrapeConfig, ScrapeTarget, Scraper};

/// Runs one cell of load: concurrency or request rate, ISL and OSL from the cell's
/// parameters; everything else from the experiment (`model`, `endpoint`, `endpoint_type`,
/// `load`, `tokenizer`, `slo`).
///
/// Stores `cells/<cell>/records.parquet` (one row per request, warmup included, in
/// harness-analytics' records schema) and `cells/<cell>/stats.json` (every statistic);
/// reports counts, throughputs and latency percentiles as metrics. Fails the cell when every measured request failed.
#[derive(Debug, Default)]
pub struct BenchmarkStep {
    synth: Mutex<Option<PromptSynth>>,
    /// The workload last built, with the configuration it was built from: files are read
    /// once per run, not once per cell.
    workload: Mutex<Option<(WorkloadConfig, Workload)>>,
}

/// What a workload is built from: its section, the model's context and the tokenizer.
type WorkloadConfig = (
    harness_core::config::Workload,
    Option<u32>,
    Option<harness_core::config::Tokenizer>,
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {}

impl BenchmarkStep {
    /// The step, named `benchmark`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The factory for the step registry: kind `benchmark`, no parameters.
    pub fn factory() -> StepFactory {
        Arc::new(|spec, source: &StepSource<'_>| {
            let _: Params = source.params(spec)?;
            if spec.step_name() != "benchmark" {
                return Err(source.error("name", "the benchmark step is always named `benchmark`"));
            }
            Ok(Arc::new(BenchmarkStep::new()) as Arc<dyn Step>)
        })
    }

    /// The experiment's workload, built once per configuration (files are read off the
    /// async workers).
    async fn workload(&self, exp: &harness_core::Experiment) -> Result<Workload> {
        let key: WorkloadConfig = (
            exp.workload.clone(),
            exp.model.max_context.map(|m| m.get()),
            exp.tokenizer.clone(),
        );
        if let Some((k, w)) = &*self.workload.lock().unwrap_or_else(|e| e.into_inner())
            && *k == key
        {
            return Ok(w.clone());
        }
        let k = key.clone();
        let w = tokio::task::spawn_blocking(move || {
            let (cfg, max_context, tokenizer) = k;
            let counter = || match tokenizer.as_ref().and_then(|t| t.path.as_ref()) {
                Some(p) => TokenCounter::from_file(p),
                None => TokenCounter::new(&synth_key(tokenizer.as_ref())),
            };
            Workload::from_config(&cfg, max_context, counter)
        })
        .await
        .map_err(|e| Error::failed_from("reading the workload", e))?
        .map_err(|e| e.at("workload.path"))?;
        *self.workload.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, w.clone()));
        Ok(w)
    }
}

/// The name a synthesiser for `tokenizer` has: the encoding, or `tokenizer.json:<path>`.
fn synth_key(tokenizer: Option<&harness_core::config::Tokenizer>) -> String {
    match tokenizer {
        Some(t) => match (&t.path, &t.name) {
            (Some(p), _) => format!("tokenizer.json:{}", p.display()),
            (None, Some(n)) => n.clone(),
            (None, None) => "cl100k_base".into(),
        },
        None => "cl100k_base".into(),
    }
}

/// Builds the prompt synthesiser for `tokenizer` (blocking: reads tokenizer tables).
fn build_synth(tokenizer: Option<&harness_core::config::Tokenizer>) -> Result<PromptSynth> {
    match tokenizer.and_then(|t| t.path.as_ref()) {
        Some(p) => PromptSynth::from_file(p).map_err(|e| e.at("tokenizer.path")),
        None => PromptSynth::new(&synth_key(tokenizer)).map_err(|e| e.at("tokenizer.name")),
    }
}

fn int_param(cx: &StepContext, name: &str) -> Option<i64> {
    cx.cell()
        .and_then(|c| c.param(name))
        .and_then(|v| v.as_i64())
}

#[async_trait]
impl Step for BenchmarkStep {
    fn name(&self) -> &str {
        "benchmark"
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let exp = cx.experiment().clone();
        let cell = cx
            .cell()
            .ok_or_else(|| Error::failed("benchmark", "runs per cell only"))?
            .clone();
        let endpoint = cx.resources().get::<Endpoint>().ok_or_else(|| {
            Error::failed(
                "benchmark",
                "no endpoint: the deployment step did not report one",
            )
        })?;
        let need = |name: &str| {
            int_param(cx, name)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| Error::failed("benchmark", format!("the cell has no `{name}`")))
        };
        let (isl, osl) = (need("isl")?, need("osl")?);
        let mut concurrency = int_param(cx, "concurrency").and_then(|v| u32::try_from(v).ok());
        let cell_concurrency = concurrency;
        let mut rate = cell.param("request_rate").and_then(|v| v.as_f64());
        // One of several clients of the cell: send this client's part of the load.
        let mut shard = cx.resources().get::<harness_core::Shard>().map(|s| *s);
        if let Some(s) = &mut shard {
            // With fewer slots than clients, only the first `concurrency` clients send, and
            // the requests are split among them.
            if let Some(c) = concurrency {
                s.count = s.count.min(c.max(1));
            }
            concurrency = concurrency.map(|c| {
                if s.index < s.count {
                    s.part(u64::from(c)) as u32
                } else {
                    0
                }
            });
            rate = rate.map(|r| r / f64::from(s.count.max(1)));
            if concurrency == Some(0) {
                return Ok(StepOutput::new().note(format!(
                    "client {} has no share of concurrency {}",
                    s.index,
                    int_param(cx, "concurrency").unwrap_or_default()
                )));
            }
        }
        // Building the synthesiser reads a tokenizer (tens of MB): off the async workers,
        // once per step.
        let key = synth_key(exp.tokenizer.as_ref());
        let cached = self
            .synth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|s| s.encoding() == key);
        let synth = match cached {
            Some(s) => s,
            None => {
                let tokenizer = exp.tokenizer.clone();
                let s = tokio::task::spawn_blocking(move || build_synth(tokenizer.as_ref()))
                    .await
                    .map_err(|e| Error::failed_from("loading the tokenizer", e))??;
                *self.synth.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.clone());
                s
            }
        };
        let load = &exp.load;
        let dataset = match &load.dataset {
            Some(path) => {
                let path = path.clone();
                let d = tokio::task::spawn_blocking(move || load::Dataset::load(&path))
                    .await
                    .map_err(|e| Error::failed_from("reading the dataset", e))?
                    .map_err(|e| e.at("load.dataset"))?;
                Some(Arc::new(d))
            }
            None => None,
        };
        let workload = self.workload(&exp).await?;
        let api_key = match &load.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                Error::failed(
                    "benchmark",
                    format!("the API key variable `{var}` (load.api_key_env) is not set"),
                )
            })?),
            None => None,
        };
        let client = Client::new(ClientConfig {
            url: endpoint.url(&exp.endpoint),
            kind: exp.endpoint_type,
            model: exp.model.name.clone(),
            stream: load.stream,
            timeout: load.request_timeout.get(),
            api_key: api_key.clone(),
            extra_body: load.extra_body.clone().into_iter().collect(),
            headers: load.headers.clone().into_iter().collect(),
            max_connections: concurrency.unwrap_or(64) as usize,
        })
        .map_err(|e| e.at("load"))?;
        // Several clients share a list of items (a trace, conversations, sessions) item by
        // item, and anything else by splitting its counts (see `LoadSpec::shard`).
        let split = shard.filter(|_| !workload.shared_by_item());
        // The cell's default count, where one applies, is the whole cell's, not a client's.
        let requests = load.requests.map(|r| u64::from(r.get())).or_else(|| {
            (shard.is_some()
                && load.duration.is_none()
                && !matches!(workload, Workload::Trace(_) | Workload::Conversations(_)))
            .then(|| LoadSpec::default_requests(cell_concurrency))
        });
        let spec = LoadSpec {
            concurrency,
            rate,
            arrival: load.arrival,
            requests: requests.map(|r| split.map_or(r, |s| s.part(r))),
            duration: load.duration.map(|d| d.get()),
            ramp: load.ramp.map(|d| d.get()),
            warmup: split.map_or(u64::from(load.warmup_requests), |s| {
                s.part(u64::from(load.warmup_requests))
            }),
            isl,
            osl,
            seed: load.seed ^ (cell.index as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
            isl_stddev: load.isl_stddev.unwrap_or(0.0),
            osl_stddev: load.osl_stddev.unwrap_or(0.0),
            dataset,
            workload,
            shard,
        };
        // A healthy server may not serve the model yet (a frontend whose workers have not
        // registered it): wait until it lists it.
        let mut warnings = Vec::new();
        let auth = ModelsRequest {
            url: endpoint.url("/v1/models"),
            api_key: api_key.as_deref(),
            headers: &load.headers,
        };
        let ready_timeout = exp.policy.ready_timeout.get();
        if let Some(w) = wait_for_model(&auth, &exp.model.name, ready_timeout, cx.cancel()).await? {
            warnings.push(w);
        }
        if load.preflight {
            warnings.extend(preflight(&client, &synth, &spec, cx.cancel()).await);
        }
        // The server's metrics, scraped from just before the load to just after it. With
        // several clients per cell each would scrape the same server: none does.
        let scraper = match shard {
            None => start_scraper(&exp, &endpoint, &mut warnings).await,
            Some(_) => None,
        };
        // One of several clients: start with the others, once everyone's setup is done.
        let epoch = match cx.resources().get::<Arc<dyn harness_core::StartGate>>() {
            Some(gate) => {
                let at = gate.arrive(cx.cancel()).await?;
                let (epoch, late) = harness_core::start_instant(at);
                if late > LATE_START_WARN {
                    warnings.push(format!(
                        "this client learnt the common start {:.0} ms after it: its first requests went out late",
                        late.as_secs_f64() * 1e3
                    ));
                }
                epoch
            }
            None => tokio::time::Instant::now(),
        };
        let records = load::run_at(&client, &synth, &spec, epoch, cx.cancel()).await;
        if cx.cancel().is_cancelled() {
            return Err(Error::Cancelled {
                what: format!("benchmark of `{}`", cell.id),
            });
        }
        let telemetry = match scraper {
            Some(s) => match s.finish(epoch).await {
                Ok(log) => Some(CellTelemetry {
                    log,
                    tolerance: exp.telemetry.tolerance,
                }),
                Err(e) => {
                    warnings.push(format!("server telemetry: {e}"));
                    None
                }
            },
            None => None,
        };
        let what = format!("benchmark of `{}`", cell.id);
        let mut out = store_records(cx, &what, records, None, telemetry).await?;
        for w in warnings {
            out = out.note(w);
        }
        Ok(out)
    }
}

/// A `GET /v1/models` as the load's requests are sent: to `url`, with their API key and
/// headers.
struct ModelsRequest<'a> {
    url: String,
    api_key: Option<&'a str>,
    headers: &'a std::collections::BTreeMap<String, String>,
}

/// How often [`wait_for_model`] asks again.
const MODEL_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// What one look at `/v1/models` says.
#[derive(Debug, PartialEq)]
enum Listed {
    /// It lists `model`.
    Yes,
    /// Not yet: no model listed, or the server failed (why).
    NotYet(String),
    /// It lists other models only.
    Others(Vec<String>),
    /// The server has no such list, or cannot be asked (why): nothing to wait for.
    NoList(String),
}

/// Reads one answer of `GET /v1/models` (its status and body) for `model`.
fn listed(status: u16, body: &str, model: &str) -> Listed {
    match status {
        200..=299 => {}
        500..=599 => return Listed::NotYet(format!("HTTP {status}")),
        _ => return Listed::NoList(format!("HTTP {status}")),
    }
    let ids: Option<Vec<String>> = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["data"].as_array().map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect()
            })
        });
    match ids {
        None => Listed::NoList("not an OpenAI model list".into()),
        Some(ids) if ids.iter().any(|id| id == model) => Listed::Yes,
        Some(ids) if ids.is_empty() => Listed::NotYet("it lists no model".into()),
        Some(ids) => Listed::Others(ids),
    }
}

/// Waits until the server lists `model` at `/v1/models`, up to `timeout` (a frontend is
/// healthy before its workers register the model: Dynamo's lists none until then, and
/// refuses requests). Returns a warning when it lists other models only (requests name
/// `model`), or has no such list.
///
/// # Errors
/// When it lists no model or answers 5xx for `timeout`, or `cancel` fires.
async fn wait_for_model(
    req: &ModelsRequest<'_>,
    model: &str,
    timeout: std::time::Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Option<String>> {
    let http = crate::client::http_client(&req.url, std::time::Duration::from_secs(10))
        .map_err(|e| e.at("deployment"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waited = false;
    loop {
        let mut get = http.get(&req.url);
        if let Some(key) = req.api_key {
            get = get.bearer_auth(key);
        }
        for (k, v) in req.headers {
            get = get.header(k.as_str(), v.as_str());
        }
        // The server answered its health check: a request that cannot be made at all (a
        // certificate not trusted, a refused connection) is the load's to report.
        let seen = match get.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.text().await {
                    Ok(body) => listed(status, &body, model),
                    Err(e) => Listed::NotYet(e.to_string()),
                }
            }
            Err(e) => Listed::NoList(format!("cannot ask: {e}")),
        };
        let why = match seen {
            Listed::Yes => {
                if waited {
                    tracing::info!(%model, "the server lists the model");
                }
                return Ok(None);
            }
            Listed::Others(ids) => {
                return Ok(Some(format!(
                    "{} lists {ids:?}, not `{model}` (model.name), which the requests name",
                    req.url
                )));
            }
            Listed::NoList(why) => {
                tracing::debug!(url = %req.url, %why, "no model list to wait for");
                return Ok(None);
            }
            Listed::NotYet(why) => why,
        };
        if !waited {
            tracing::info!(url = %req.url, %model, %why, "waiting until the server lists the model");
            waited = true;
        }
        if tokio::time::Instant::now() + MODEL_POLL > deadline {
            return Err(Error::failed(
                "benchmark",
                format!(
                    "{} did not list `{model}` within policy.ready_timeout ({} s): {why}",
                    req.url,
                    timeout.as_secs()
                ),
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(MODEL_POLL) => {}
            () = cancel.cancelled() => {
                return Err(Error::Cancelled { what: format!("waiting for `{model}` to be served") });
            }
        }
    }
}

/// A client that learns the common start later than this notes it.
const LATE_START_WARN: std::time::Duration = std::time::Duration::from_millis(10);

/// Starts scraping the deployment's metrics endpoint (when it answers) and the experiment's
/// telemetry targets; `None` when telemetry is off or has no target. A failure to start is
/// a warning: telemetry never fails a cell.
async fn start_scraper(
    exp: &harness_core::Experiment,
    endpoint: &Endpoint,
    warnings: &mut Vec<String>,
) -> Option<Scraper> {
    let t = &exp.telemetry;
    if !t.enabled {
        return None;
    }
    let mut targets = Vec::new();
    if t.endpoint {
        targets.push(ScrapeTarget::new("endpoint", endpoint.url(&t.metrics_path)).optional());
    }
    targets.extend(
        t.targets
            .iter()
            .map(|x| ScrapeTarget::new(x.label(), x.url.clone())),
    );
    if targets.is_empty() {
        return None;
    }
    let mut cfg = ScrapeConfig::new(targets, t.interval.get());
    cfg.max_bytes = t.max_bytes.get();
    match Scraper::start(cfg).await {
        Ok(s) => {
            for (target, why) in s.left_out() {
                tracing::debug!(url = %target.url, %why, "no server metrics from the endpoint");
            }
            Some(s)
        }
        Err(e) => {
            warnings.push(format!("server telemetry: {e}"));
            None
        }
    }
}

/// What was scraped during a cell, stored with its records.
pub(crate) struct CellTelemetry {
    log: harness_analytics::telemetry::ScrapeLog,
    tolerance: f64,
}

/// Above this p99 of `schedule_lag` a cell's notes say the client queued its arrivals.
const SCHEDULE_LAG_WARN_MS: f64 = 1.0;

/// Stores a cell's records (`cells/<cell>/records.parquet`) and statistics
/// (`cells/<cell>/stats.json`, with `tool` when another tool measured them), and returns
/// the artifacts and headline metrics. Fails when every measured request failed, naming
/// the first error; `what` names the work in that error.
pub(crate) async fn store_records(
    cx: &StepContext,
    what: &str,
    records: Vec<Record>,
    tool: Option<String>,
    telemetry: Option<CellTelemetry>,
) -> Result<StepOutput> {
    let cell = cx
        .cell()
        .ok_or_else(|| Error::failed(what, "runs per cell only"))?
        .id
        .clone();
    let slo = cx.experiment().slo.clone();
    // Statistics and parquet encoding are CPU work: off the async workers.
    let (records, summary, parquet, server) = tokio::task::spawn_blocking(move || {
        let batch = records_batch(&records)?;
        let mut summary = CellStats::of_batch(&batch, &slo)?;
        summary.tool = tool;
        let parquet = to_parquet(&batch)?;
        let server = match (telemetry, Window::of_records(&records)) {
            (Some(t), Some(window)) if !t.log.targets.is_empty() => {
                let client = ClientCounts::of_records(&records);
                let (tsum, table) = telemetry::summarise(&t.log, window, &client, t.tolerance)?;
                summary.server = tsum.server.clone();
                // Energy per output token: the GPUs' power (W, summed) over the output rate.
                if let Some(power) = summary.server.get("gpu_power.mean").copied()
                    && summary.output_token_throughput > 0.0
                {
                    summary.server.insert(
                        "energy_per_output_token_j".into(),
                        power / summary.output_token_throughput,
                    );
                }
                Some((tsum, to_parquet(&table)?))
            }
            _ => None,
        };
        Ok::<_, harness_analytics::Error>((records, summary, parquet, server))
    })
    .await
    .map_err(|e| Error::failed_from("summarising the records", e))??;
    let layout = cx.run().layout();
    // A client of several writes its shard; the controlling side merges them.
    let shard = cx.resources().get::<harness_core::Shard>().map(|s| *s);
    let (records_key, summary_key) = match shard {
        Some(s) => (layout.cell_shard_records(&cell, s.index), None),
        None => (layout.cell_records(&cell), Some(layout.cell_stats(&cell))),
    };
    cx.store().put(&records_key, parquet).await?;
    let mut telemetry_notes = Vec::new();
    let mut telemetry_keys = Vec::new();
    if let Some((tsum, table)) = server {
        let (table_key, json_key) = (
            layout.cell_server_metrics(&cell),
            layout.cell_telemetry(&cell),
        );
        cx.store().put(&table_key, table).await?;
        cx.store().put_json(&json_key, &tsum).await?;
        telemetry_notes = tsum.notes();
        telemetry_keys = vec![table_key, json_key];
    }
    if let Some(key) = &summary_key {
        cx.store().put_json(key, &summary).await?;
    }
    if summary.succeeded == 0 {
        let first = records
            .iter()
            .find(|r| !r.warmup)
            .and_then(|r| r.error_message.clone())
            .unwrap_or_default();
        return Err(Error::failed(
            what,
            format!(
                "all {} requests failed ({:?}); first: {first}",
                summary.requests, summary.errors
            ),
        ));
    }
    let mut out = StepOutput::new().artifact(records_key);
    if let Some(key) = summary_key {
        out = out.artifact(key);
    }
    for key in telemetry_keys {
        out = out.artifact(key);
    }
    for note in telemetry_notes {
        out = out.note(note);
    }
    for (k, v) in summary.headline_metrics() {
        out = out.metric(k, v);
    }
    if let Some(lag) = summary
        .distributions
        .get("schedule_lag")
        .and_then(|d| d.stat("p99"))
        .filter(|p99| *p99 > SCHEDULE_LAG_WARN_MS)
    {
        out = out.note(format!(
            "requests started up to {lag:.2} ms (p99) after their scheduled arrival: the client queued them (a concurrency cap, or a client that fell behind); ttft_from_schedule counts that wait"
        ));
    }
    if summary.retried > 0 {
        out = out.note(format!(
            "{} requests were sent twice: the server had closed their pooled keep-alive connection before answering",
            summary.retried
        ));
    }
    if let Some(src) = summary.output_token_sources.get("chunks") {
        out = out.note(format!(
            "{src} requests had no usage from the server; their output tokens are chunk counts"
        ));
    }
    Ok(out)
}

/// Two requests at the cell's ISL and OSL, before the load: warnings when the server does
/// not return OSL tokens, or counts the prompt far from ISL (another tokenizer), or fails.
async fn preflight(
    client: &Client,
    synth: &PromptSynth,
    spec: &LoadSpec,
    cancel: &tokio_util::sync::CancellationToken,
) -> Vec<String> {
    let mut check = LoadSpec::closed(1, 2, spec.isl, spec.osl);
    check.seed = spec.seed ^ 0x5EED_F11E;
    let records = load::run(client, synth, &check, cancel).await;
    preflight_warnings(&records, spec.isl, spec.osl, synth.encoding())
}

/// The preflight's verdict on its records.
pub fn preflight_warnings(
    records: &[crate::client::Record],
    isl: u32,
    osl: u32,
    encoding: &str,
) -> Vec<String> {
    use crate::client::TokenSource;
    let mut out = Vec::new();
    if let Some(failed) = records.iter().find(|r| !r.ok()) {
        out.push(format!(
            "preflight: a request failed ({}): {}",
            failed.error.map_or("?", |k| k.as_str()),
            failed.error_message.as_deref().unwrap_or_default()
        ));
        return out;
    }
    let with_usage: Vec<_> = records
        .iter()
        .filter(|r| r.output_token_source == TokenSource::Usage)
        .collect();
    if with_usage.is_empty() {
        out.push(
            "preflight: the server reports no usage; output tokens are counted as chunks".into(),
        );
        return out;
    }
    if let Some(r) = with_usage
        .iter()
        .find(|r| r.output_tokens != u64::from(osl))
    {
        out.push(format!(
            "preflight: the server returned {} output tokens for OSL {osl}; \
             set load.extra_body {{ignore_eos: true}} or min_tokens for exact OSL",
            r.output_tokens
        ));
    }
    // Chat templates add a few tokens; a far-off count means another tokenizer.
    if let Some(r) = with_usage.iter().find(|r| {
        let n = r.input_tokens as f64;
        let want = f64::from(isl);
        n < want * 0.8 || n > want * 1.25 + 32.0
    }) {
        out.push(format!(
            "preflight: the server counts {} input tokens for a {isl}-token prompt under `{encoding}`; \
             set `tokenizer` to the model's for exact ISL",
            r.input_tokens
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Listed, listed};

    #[test]
    fn a_model_list_says_whether_to_wait() {
        let list = r#"{"object": "list", "data": [{"id": "a"}, {"id": "m"}]}"#;
        assert_eq!(listed(200, list, "m"), Listed::Yes);
        assert_eq!(
            listed(200, list, "x"),
            Listed::Others(vec!["a".into(), "m".into()])
        );
        assert!(matches!(
            listed(200, r#"{"data": []}"#, "m"),
            Listed::NotYet(_)
        ));
        assert!(matches!(listed(503, "", "m"), Listed::NotYet(_)));
        // No list to wait for: no such route, or not the OpenAI shape.
        assert!(matches!(listed(404, "", "m"), Listed::NoList(_)));
        assert!(matches!(listed(200, "ok", "m"), Listed::NoList(_)));
    }
}
