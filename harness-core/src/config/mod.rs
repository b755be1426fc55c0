//! The experiment: one YAML file that says what to benchmark and how.
//!
//! The proposal's format is valid as is:
//!
//! ```
//! let yaml = r#"
//! name: "blueprint-name"
//! model:
//!     name: "RedHat/Llama-3.3-70B-Instruct"
//!     path: "/path/to/model"
//! concurrency: [1, 2, 4, 8]
//! endpoint: "/v1/chat/completions"
//! endpoint_type: "chat"
//! benchmark:
//!     isl_osl:
//!     - [8192, 1024]
//!     - [1024, 1024]
//! "#;
//! let exp = harness_core::Experiment::from_yaml_str(yaml, "inline.yaml")?;
//! assert_eq!(exp.plan()?.len(), 8);
//! # Ok::<(), harness_core::Error>(())
//! ```
//!
//! Every other section is optional; [`DEFAULT_EXPERIMENT`] is a commented file that shows them
//! all with their defaults.

mod load;
pub mod values;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, MAX_CONFIG_BYTES};
use values::{AxisValue, HumanDuration, IslOsl, Name, Positive, Rate, Sweep};

/// A commented experiment that shows every section with its default value.
pub const DEFAULT_EXPERIMENT: &str = include_str!("default-experiment.yaml");

/// One experiment, as written in its YAML file. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Experiment {
    /// The experiment's name: it names the folder of its runs.
    pub name: Name,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The model being served.
    pub model: Model,
    /// Concurrency levels to sweep (closed loop: this many requests in flight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Sweep<Positive>>,
    /// Request rates to sweep, in requests/s (open loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<Sweep<Rate>>,
    /// The API path of the endpoint, e.g. `/v1/chat/completions`.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// The API flavour of the endpoint.
    #[serde(default)]
    pub endpoint_type: EndpointType,
    /// Workload shape: the ISL/OSL pairs.
    pub benchmark: Benchmark,
    /// More sweep axes: each key is an axis, each value list its points.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sweep: BTreeMap<Name, Sweep<AxisValue>>,
    /// Where the model runs. Without it, an existing server at `http://127.0.0.1:8000`.
    #[serde(default)]
    pub deployment: Deployment,
    /// Where steps and deployments run.
    #[serde(default)]
    pub backend: BackendConfig,
    /// How much load each cell gets (read by the benchmark step).
    #[serde(default)]
    pub load: Load,
    /// The tokenizer used to build prompts and count tokens (read by the benchmark step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<Tokenizer>,
    /// Service-level objectives for goodput (read by analytics).
    #[serde(default, skip_serializing_if = "Slo::is_empty")]
    pub slo: Slo,
    /// Where results go.
    #[serde(default)]
    pub storage: Storage,
    /// Retries, timeouts and fail-fast.
    #[serde(default)]
    pub policy: Policy,
    /// Extra or swapped steps. Empty means the tool's default per-cell step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepSpec>,
    /// Where each step stands in the file, for located errors from step factories.
    #[serde(skip)]
    pub(crate) step_positions: Positions,
}

/// Line and column of items in the source file. Not part of the experiment's value: two
/// experiments compare equal whatever their positions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Positions(Vec<(usize, usize)>);

impl Positions {
    pub(crate) fn get(&self, i: usize) -> Option<&(usize, usize)> {
        self.0.get(i)
    }
}

impl PartialEq for Positions {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

fn default_endpoint() -> String {
    "/v1/chat/completions".into()
}

/// The served model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Model {
    /// The name the server knows the model by, e.g. `RedHat/Llama-3.3-70B-Instruct`.
    pub name: String,
    /// Where the weights live, as the deployment sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The API flavour of the endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndpointType {
    /// OpenAI chat completions.
    #[default]
    Chat,
    /// OpenAI text completions.
    Completions,
}

/// The workload shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Benchmark {
    /// Input and output sequence lengths in tokens, one pair per series.
    pub isl_osl: Sweep<IslOsl>,
}

/// Where the model runs and how harness knows it is ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDeployment", into = "RawDeployment")]
#[non_exhaustive]
pub enum Deployment {
    /// A server that is already running.
    Url {
        /// Its base URL, `http://host:port`.
        url: String,
        /// A path that answers 2xx when the server is ready; checked before the first cell.
        health: Option<String>,
    },
    /// A local command that harness starts, waits for, and stops at the end.
    Command(CommandDeployment),
}

impl Default for Deployment {
    fn default() -> Self {
        Deployment::Url {
            url: "http://127.0.0.1:8000".into(),
            health: None,
        }
    }
}

/// A deployment that is a local command.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CommandDeployment {
    /// The program and its arguments. `{port}` is replaced by a free port on 127.0.0.1.
    pub command: Vec<String>,
    /// The port the server listens on; a free one is picked when not set.
    pub port: Option<u16>,
    /// A path that answers 2xx when the server is ready; without it, readiness is the
    /// TCP port accepting connections.
    pub health: Option<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// The working directory.
    pub cwd: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cwd: Option<PathBuf>,
}

impl TryFrom<RawDeployment> for Deployment {
    type Error = String;
    fn try_from(r: RawDeployment) -> Result<Self, String> {
        if let Some(h) = &r.health
            && !h.starts_with('/')
        {
            return Err(format!(
                "deployment.health must be a path starting with `/`, got `{h}`"
            ));
        }
        match (r.url, r.command) {
            (Some(url), None) => {
                if r.port.is_some() || !r.env.is_empty() || r.cwd.is_some() {
                    return Err(
                        "deployment.port, env and cwd apply to `command` only, not to `url`".into(),
                    );
                }
                check_http_url(&url).map_err(|e| format!("deployment.url: {e}"))?;
                Ok(Deployment::Url {
                    url: url.trim_end_matches('/').to_owned(),
                    health: r.health,
                })
            }
            (None, Some(command)) => {
                if command.is_empty() || command[0].trim().is_empty() {
                    return Err("deployment.command needs a program to run".into());
                }
                if r.port == Some(0) {
                    return Err(
                        "deployment.port must be 1 to 65535; leave it out to pick a free port"
                            .into(),
                    );
                }
                Ok(Deployment::Command(CommandDeployment {
                    command,
                    port: r.port,
                    health: r.health,
                    env: r.env,
                    cwd: r.cwd,
                }))
            }
            (Some(_), Some(_)) => {
                Err("deployment takes either `url` or `command`, not both".into())
            }
            (None, None) => Err(
                "deployment needs `url` (a running server) or `command` (a local process to start)"
                    .into(),
            ),
        }
    }
}

impl From<Deployment> for RawDeployment {
    fn from(d: Deployment) -> Self {
        match d {
            Deployment::Url { url, health } => RawDeployment {
                url: Some(url),
                health,
                ..Default::default()
            },
            Deployment::Command(c) => RawDeployment {
                command: Some(c.command),
                port: c.port,
                health: c.health,
                env: c.env,
                cwd: c.cwd,
                ..Default::default()
            },
        }
    }
}

/// Checks that `url` is `http://host[:port][/path]` or `https://...`.
pub(crate) fn check_http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("expected a URL starting with http:// or https://, got `{url}`"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("the URL `{url}` has no host"));
    }
    if let Some((_, port)) = host.rsplit_once(':')
        && !port.ends_with(']')
        && port.parse::<u16>().ok().is_none_or(|p| p == 0)
    {
        return Err(format!("the URL `{url}` has an invalid port `{port}`"));
    }
    Ok(())
}

/// Where steps and deployments run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackendConfig {
    /// The backend kind.
    #[serde(default)]
    pub kind: BackendKind,
}

/// The backend kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackendKind {
    /// Child processes of harness on this machine.
    #[default]
    Local,
}

/// How much load each cell gets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Load {
    /// Measured requests per cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Positive>,
    /// Or a measured duration per cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
    /// Requests sent first and kept in the records, but left out of the statistics.
    #[serde(default)]
    pub warmup_requests: u32,
    /// Seed for prompts and arrivals, so a run can be repeated exactly.
    #[serde(default)]
    pub seed: u64,
}

/// The tokenizer for prompt synthesis and token counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Tokenizer {
    /// A built-in encoding name (e.g. `cl100k_base`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Or a `tokenizer.json` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// Service-level objectives; a request meets the SLO when it meets every one that is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Slo {
    /// Time to first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft: Option<HumanDuration>,
    /// Inter-token latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itl: Option<HumanDuration>,
    /// End-to-end request latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_latency: Option<HumanDuration>,
}

impl Slo {
    fn is_empty(&self) -> bool {
        self == &Slo::default()
    }
}

/// Where results go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Storage {
    /// A store URL (`file://./harness-runs` when not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Retries, timeouts and fail-fast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Policy {
    /// Retries of a step after a transient error (0 to 10).
    #[serde(default = "default_retries", deserialize_with = "de_retries")]
    pub retries: u32,
    /// The first backoff between retries; it doubles each time, up to 30 s.
    #[serde(default = "default_backoff")]
    pub backoff: HumanDuration,
    /// The longest one step may run.
    #[serde(default = "default_step_timeout")]
    pub step_timeout: HumanDuration,
    /// The longest a deployment may take to become ready.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout: HumanDuration,
    /// The longest each teardown step may run.
    #[serde(default = "default_teardown_timeout")]
    pub teardown_timeout: HumanDuration,
    /// Stop the sweep at the first failed cell.
    #[serde(default)]
    pub fail_fast: bool,
}

fn default_retries() -> u32 {
    2
}
fn default_backoff() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}
fn default_step_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30 * 60))
}
fn default_ready_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10 * 60))
}
fn default_teardown_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(2 * 60))
}
fn de_retries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v > 10 {
        return Err(serde::de::Error::custom(format!(
            "retries must be 0 to 10, got {v}"
        )));
    }
    Ok(v)
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retries: default_retries(),
            backoff: default_backoff(),
            step_timeout: default_step_timeout(),
            ready_timeout: default_ready_timeout(),
            teardown_timeout: default_teardown_timeout(),
            fail_fast: false,
        }
    }
}

/// When a step runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Once, before the first cell.
    Setup,
    /// For every cell.
    #[default]
    Cell,
    /// Once at the end, always, also after failure or cancellation.
    Teardown,
}

/// One step of the pipeline, as written in the experiment's `steps` list.
///
/// `kind` picks the implementation; every other key is that kind's own parameter and is
/// checked by it when the pipeline is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepSpec {
    /// Which step implementation, e.g. `command`.
    pub kind: Name,
    /// A name unique in the pipeline; defaults to the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// When it runs.
    #[serde(default)]
    pub stage: Stage,
    /// A timeout for this step instead of `policy.step_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// The kind's own parameters.
    #[serde(flatten)]
    pub params: BTreeMap<String, serde_json::Value>,
}

impl StepSpec {
    /// The step's name: `name`, else `kind`.
    pub fn step_name(&self) -> &str {
        self.name.as_ref().unwrap_or(&self.kind).as_str()
    }
}
