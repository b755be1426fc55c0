//! Other benchmark tools as steps: [`AiperfStep`] runs aiperf for a cell, and
//! [`ImportHook`] turns any tool's export, left by a `command` step in `{out}`, into the
//! cell's records and statistics (see [`harness_analytics::import`] for the formats and
//! their field mappings).
//!
//! ```yaml
//! steps:
//!   - kind: aiperf                 # aiperf profile for each cell, results imported
//!     program: .venv/bin/aiperf     # default: aiperf on PATH
//!   - kind: command                # any tool; its export imported
//!     name: genai-perf
//!     run: [genai-perf, profile, -m, "{model}", --concurrency, "{concurrency}",
//!           --artifact-dir, "{out}"]
//!     results: {import: genai-perf, path: profile_export.json}
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use harness_analytics::import::{self, Format};
use harness_core::config::{Arrival, EndpointType};
use harness_core::pipeline::{StepFactory, StepSource};
use harness_core::steps::{CommandStep, ResultHook, ResultHookFactory};
use harness_core::{Endpoint, Error, Result, Step, StepContext, StepOutput};
use serde::Deserialize;

use crate::step::store_records;

/// Imports a tool's export from a command's output folder and stores it as the cell's
/// records and statistics, with the tool named in `stats.json` (`tool`) and in a note.
#[derive(Debug, Clone)]
pub struct ImportHook {
    format: Format,
    path: Option<PathBuf>,
}

impl ImportHook {
    /// Imports `format` from the output folder, or from `path` inside it.
    pub fn new(format: Format, path: Option<PathBuf>) -> Self {
        ImportHook { format, path }
    }

    /// The factory for `results:` of `command` steps: `{import: <format>, path: <file>}`.
    ///
    /// ```
    /// let factory = harness_core::steps::CommandStep::factory_with_results(
    ///     harness_llm::tools::ImportHook::factory(),
    /// );
    /// # let _ = factory;
    /// ```
    pub fn factory() -> ResultHookFactory {
        Arc::new(|v| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Params {
                import: String,
                #[serde(default)]
                path: Option<PathBuf>,
            }
            let p: Params = serde_json::from_value(v.clone())
                .map_err(|e| format!("{e}; expected {{import: <format>, path: <file>}}"))?;
            let format = Format::parse(&p.import).map_err(|e| e.to_string())?;
            if let Some(path) = &p.path
                && (path.is_absolute()
                    || path
                        .components()
                        .any(|c| c == std::path::Component::ParentDir))
            {
                return Err(format!(
                    "path `{}` must be relative to the command's {{out}} folder",
                    path.display()
                ));
            }
            Ok(Arc::new(ImportHook::new(format, p.path)) as Arc<dyn ResultHook>)
        })
    }
}

#[async_trait]
impl ResultHook for ImportHook {
    async fn collect(&self, cx: &StepContext, out_dir: &Path) -> Result<StepOutput> {
        let path = match &self.path {
            Some(p) => out_dir.join(p),
            None => out_dir.to_path_buf(),
        };
        let format = self.format;
        let imported = tokio::task::spawn_blocking(move || import::import(format, &path))
            .await
            .map_err(|e| Error::failed_from("importing results", e))?
            // Name the file as the user knows it: relative to {out}.
            .map_err(|e| {
                let msg = e
                    .to_string()
                    .replace(&out_dir.display().to_string(), "{out}");
                Error::failed(format!("importing {} results", format.as_str()), msg)
            })?;
        let tool = imported.tool.clone();
        let what = format!("{tool} run");
        let mut out = store_records(cx, &what, imported.records, Some(tool.clone()), None).await?;
        out = out.note(format!("measured by {tool}, imported by harness"));
        for n in imported.notes {
            out = out.note(n);
        }
        for (k, v) in imported.reported {
            out = out.metric(format!("reported.{k}"), v);
        }
        Ok(out)
    }
}

/// Runs `aiperf profile` for each cell against the deployment's endpoint and imports its
/// `profile_export.jsonl` (kind `aiperf`).
///
/// The cell and experiment map to aiperf's arguments: `--model`, `--url`,
/// `--endpoint-type`, `--streaming` (`load.stream`), `--concurrency` and/or
/// `--request-rate` with `--arrival-pattern` (`load.arrival`), `--isl`/`--isl-stddev`,
/// `--osl`/`--osl-stddev`, `--request-count` or `--benchmark-duration`,
/// `--warmup-request-count`, `--concurrency-ramp-duration`/`--request-rate-ramp-duration`
/// (`load.ramp`), `--extra-inputs k:v` for each of `load.extra_body` (so
/// `ignore_eos` and `min_tokens` reach the server), `--header` for `load.headers`,
/// `--request-timeout-seconds`, `--random-seed`, `--api-key` (the value of the variable
/// `load.api_key_env` names, read when the cell runs), `load.dataset` as a `single_turn`
/// `--input-file` (converted: `prompt` becomes `text`, `output_tokens` `output_length`, the
/// cell's OSL where a line has none; taken in order), and `--tokenizer` (the step's
/// `tokenizer`, else the folder of the experiment's `tokenizer.path`, else the model name).
/// A built-in `tokenizer.name` (tiktoken's) has no aiperf equivalent and is refused when
/// the experiment is loaded, rather than quietly measured with another tokenizer. Token
/// counts come from the server's usage (`--use-server-token-count`), as harness' own load
/// generator counts them. `args` are appended as given.
///
/// ```yaml
/// - kind: aiperf
///   program: /opt/aiperf/bin/aiperf   # default: aiperf
///   tokenizer: /models/llama/          # default: see above
///   args: [--no-server-metrics]
/// ```
#[derive(Debug, Clone, Default)]
pub struct AiperfStep {
    params: AiperfParams,
}

/// The parameters of [`AiperfStep`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiperfParams {
    /// The aiperf executable (default `aiperf`).
    #[serde(default)]
    pub program: Option<String>,
    /// `--tokenizer`: a Hugging Face id or a local folder.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Arguments appended to the generated ones.
    #[serde(default)]
    pub args: Vec<String>,
}

impl AiperfStep {
    /// The step, named `aiperf`.
    pub fn new(params: AiperfParams) -> Self {
        AiperfStep { params }
    }

    /// The factory for the step registry: kind `aiperf`.
    pub fn factory() -> StepFactory {
        Arc::new(|spec, source: &StepSource<'_>| {
            let p: AiperfParams = source.params(spec)?;
            if p.program.as_deref().is_some_and(|s| s.trim().is_empty()) {
                return Err(source.error("program", "is empty"));
            }
            let exp = source.experiment;
            if p.tokenizer.is_none()
                && let Some(name) = exp.tokenizer.as_ref().and_then(|t| t.name.as_deref())
                && exp.tokenizer.as_ref().is_none_or(|t| t.path.is_none())
            {
                return Err(source.error(
                    "tokenizer",
                    format!(
                        "aiperf cannot use the built-in tokenizer `{name}` (tokenizer.name); give this step a `tokenizer` (a Hugging Face id or folder) or the experiment a tokenizer.path, so aiperf counts tokens as the experiment does"
                    ),
                ));
            }
            Ok(Arc::new(AiperfStep::new(p)) as Arc<dyn Step>)
        })
    }

    /// aiperf's arguments for the cell in `cx` (without the program), writing to `out`.
    ///
    /// # Errors
    /// When the cell lacks `isl`/`osl` or both `concurrency` and `request_rate`, or there
    /// is no endpoint.
    pub fn args(&self, cx: &StepContext, out: &str) -> Result<Vec<String>> {
        self.args_with(cx, out, None)
    }

    /// As [`AiperfStep::args`], with `input_file` the experiment's dataset converted to
    /// aiperf's `single_turn` format.
    fn args_with(
        &self,
        cx: &StepContext,
        out: &str,
        input_file: Option<&std::path::Path>,
    ) -> Result<Vec<String>> {
        let exp = cx.experiment();
        let cell = cx
            .cell()
            .ok_or_else(|| Error::failed("aiperf", "runs per cell only"))?;
        let endpoint = cx.resources().get::<Endpoint>().ok_or_else(|| {
            Error::failed(
                "aiperf",
                "no endpoint: the deployment step did not report one",
            )
        })?;
        let int = |name: &str| {
            cell.param(name)
                .and_then(|v| v.as_i64())
                .and_then(|v| u64::try_from(v).ok())
        };
        let need = |name: &str| {
            int(name).ok_or_else(|| Error::failed("aiperf", format!("the cell has no `{name}`")))
        };
        let load = &exp.load;
        let mut a: Vec<String> = vec!["profile".into()];
        let mut arg = |k: &str, v: String| {
            a.push(k.into());
            a.push(v);
        };
        arg("--model", exp.model.name.clone());
        arg("--url", endpoint.base_url.trim_end_matches('/').to_owned());
        arg(
            "--endpoint-type",
            match exp.endpoint_type {
                EndpointType::Completions => "completions",
                _ => "chat",
            }
            .into(),
        );
        // A dataset brings its own prompts and output lengths (aiperf refuses the
        // synthetic shaping with one).
        if input_file.is_none() {
            arg("--isl", need("isl")?.to_string());
            arg("--osl", need("osl")?.to_string());
            if let Some(sd) = load.isl_stddev {
                arg("--isl-stddev", sd.to_string());
            }
            if let Some(sd) = load.osl_stddev {
                arg("--osl-stddev", sd.to_string());
            }
        }
        let concurrency = int("concurrency");
        let rate = cell.param("request_rate").and_then(|v| v.as_f64());
        if concurrency.is_none() && rate.is_none() {
            return Err(Error::failed(
                "aiperf",
                "the cell has neither `concurrency` nor `request_rate`",
            ));
        }
        if let Some(c) = concurrency {
            arg("--concurrency", c.to_string());
        }
        if let Some(r) = rate {
            arg("--request-rate", r.to_string());
            let pattern = match load.arrival {
                Arrival::Constant => "constant",
                _ => "poisson",
            };
            arg("--arrival-pattern", pattern.into());
        }
        match (load.requests, load.duration) {
            (_, Some(d)) => arg("--benchmark-duration", d.get().as_secs_f64().to_string()),
            (Some(n), None) => arg("--request-count", n.get().to_string()),
            (None, None) => {}
        }
        if let Some(r) = load.ramp {
            let secs = r.get().as_secs_f64().to_string();
            if concurrency.is_some() {
                arg("--concurrency-ramp-duration", secs.clone());
            }
            if rate.is_some() {
                arg("--request-rate-ramp-duration", secs);
            }
        }
        if load.warmup_requests > 0 {
            arg("--warmup-request-count", load.warmup_requests.to_string());
        }
        for (k, v) in &load.extra_body {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            arg("--extra-inputs", format!("{k}:{v}"));
        }
        for (k, v) in &load.headers {
            arg("--header", format!("{k}:{v}"));
        }
        arg(
            "--request-timeout-seconds",
            load.request_timeout.get().as_secs_f64().to_string(),
        );
        arg("--random-seed", load.seed.to_string());
        if let Some(var) = &load.api_key_env {
            let key = std::env::var(var).map_err(|_| {
                Error::invalid(
                    "load.api_key_env",
                    format!("the API key variable `{var}` is not set"),
                )
            })?;
            arg("--api-key", key);
        }
        if let Some(file) = input_file {
            arg("--input-file", file.display().to_string());
            arg("--custom-dataset-type", "single_turn".into());
            arg("--dataset-sampling-strategy", "sequential".into());
        }
        let tokenizer = self
            .params
            .tokenizer
            .clone()
            .or_else(|| {
                exp.tokenizer
                    .as_ref()
                    .and_then(|t| t.path.as_ref())
                    .and_then(|p| p.parent())
                    .map(|p| p.display().to_string())
            })
            .unwrap_or_else(|| exp.model.name.clone());
        arg("--tokenizer", tokenizer);
        arg("--artifact-dir", out.to_owned());
        arg("--ui-type", "none".into());
        if load.stream {
            a.push("--streaming".into());
        }
        a.push("--use-server-token-count".into());
        a.push("--no-gpu-telemetry".into());
        a.extend(self.params.args.iter().cloned());
        Ok(a)
    }
}

#[async_trait]
impl Step for AiperfStep {
    fn name(&self) -> &str {
        "aiperf"
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let program = self
            .params
            .program
            .clone()
            .unwrap_or_else(|| "aiperf".into());
        let input = match &cx.experiment().load.dataset {
            Some(path) => Some(single_turn_file(path, cx).await?),
            None => None,
        };
        let mut run = vec![program];
        run.extend(self.args_with(cx, "{out}", input.as_ref().map(|f| f.path()))?);
        let step = CommandStep::new("aiperf", run)?
            .results(Arc::new(ImportHook::new(Format::Aiperf, None)));
        step.run(cx).await
    }
}

/// A file removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The experiment's dataset in aiperf's `single_turn` JSON lines: `text`, and
/// `output_length` (the line's own, else the cell's OSL).
async fn single_turn_file(path: &std::path::Path, cx: &StepContext) -> Result<Scratch> {
    let osl = cx
        .cell()
        .and_then(|c| c.param("osl"))
        .and_then(|v| v.as_i64())
        .and_then(|v| u32::try_from(v).ok());
    let source = path.to_owned();
    let body = tokio::task::spawn_blocking(move || {
        let data = crate::load::Dataset::load(&source)?;
        let mut out = String::new();
        for (prompt, own) in data.entries() {
            let line = serde_json::json!({"text": prompt, "output_length": own.or(osl)});
            out.push_str(&line.to_string());
            out.push('\n');
        }
        Ok::<_, crate::Error>(out)
    })
    .await
    .map_err(|e| Error::failed_from("converting the dataset for aiperf", e))?
    .map_err(|e| e.at("load.dataset"))?;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = Scratch(std::env::temp_dir().join(format!(
        "harness-aiperf-input-{}-{n}.jsonl",
        std::process::id()
    )));
    tokio::fs::write(file.path(), body)
        .await
        .map_err(|e| Error::io(format!("writing {}", file.path().display()), e))?;
    Ok(file)
}
