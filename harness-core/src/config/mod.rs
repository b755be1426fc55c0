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
mod variants;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, MAX_CONFIG_BYTES};
use values::{AxisValue, HumanDuration, IslOsl, Name, Positive, Rate, Sweep};
pub use variants::{
    Limit, MAX_SEARCH_VALUES, Search, SearchAxis, TREATMENT_SECTIONS, Treatment, Treatments,
    VarValue,
};
pub use workload::{GroupOrder, Workload, WorkloadKind};

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
    #[serde(default, skip_serializing_if = "Slo::is_unset")]
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
    /// Values of `{name}` placeholders in the deployment's command, environment, URL and
    /// manifests (`{model}` is `model.path`, else `model.name`; `{treatment}` the treatment's
    /// name; `{port}` is the backend's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<Name, VarValue>,
    /// Variants of the experiment, each deployed in turn with its cells: a treatment sets
    /// sections over the experiment's (`deployment`, `load`, `vars`, ...).
    #[serde(default, skip_serializing_if = "Treatments::is_empty")]
    pub treatments: Treatments,
    /// Server metrics scraped during each cell (read by the benchmark step).
    #[serde(default, skip_serializing_if = "Telemetry::is_default")]
    pub telemetry: Telemetry,
    /// What the requests are: synthetic prompts (the default), shared prefixes, multi-turn
    /// sessions, a trace or conversations (read by the benchmark step).
    #[serde(default, skip_serializing_if = "Workload::is_default")]
    pub workload: Workload,
    /// Find the largest concurrency or request rate at which an SLO holds, instead of
    /// sweeping a fixed list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<Search>,
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
    /// The model's context window in tokens: a trace or conversation that needs more is
    /// refused with its file and line before anything is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context: Option<Positive>,
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
        /// GPUs serving the model (all replicas), for per-GPU throughput.
        gpus: Option<u32>,
    },
    /// A local command that harness starts, waits for, and stops at the end.
    Command(CommandDeployment),
    /// The built-in mock OpenAI server (harness-llm), started as a local process: for
    /// demos, tests and measuring the client itself.
    Mock(MockDeployment),
    /// Kubernetes manifests that harness applies, waits for and deletes at the end (a Dynamo
    /// `DynamoGraphDeployment`, or a Deployment and Service of vLLM or SGLang); needs
    /// `backend.kind: kubernetes`.
    Manifests {
        /// A YAML file's path, or the YAML itself (text with a newline).
        manifests: String,
        /// GPUs serving the model (all replicas), for per-GPU throughput.
        gpus: Option<u32>,
        /// Where clients reach the deployed model, when it is not the first Service's
        /// in-cluster name (or a Dynamo graph's `<name>-frontend:8000`): a gateway, an
        /// Ingress, a router in front of the pods.
        url: Option<String>,
    },
}

/// The mock OpenAI server's behaviour: timing, output length and injected faults.
///
/// Each request draws its fate from a seeded hash of its sequence number, so a run repeats
/// exactly. Rates are fractions of requests, from 0 to 1, and add up to at most 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MockDeployment {
    /// Time to the first content token, in milliseconds.
    #[serde(default, deserialize_with = "de_millis")]
    pub ttft_ms: f64,
    /// Time between content tokens, in milliseconds.
    #[serde(default, deserialize_with = "de_millis")]
    pub itl_ms: f64,
    /// Each delay is scaled by a uniform factor in `1 ± jitter` (0 to 1).
    #[serde(default, deserialize_with = "de_fraction")]
    pub jitter: f64,
    /// Output tokens per response; without it, the request's `max_tokens` (16 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<Positive>,
    /// Fraction of requests answered with `error_status` instead of a completion.
    #[serde(default, deserialize_with = "de_fraction")]
    pub error_rate: f64,
    /// The HTTP status of injected errors (400 to 599).
    #[serde(default = "default_error_status", deserialize_with = "de_status")]
    pub error_status: u16,
    /// Fraction of streamed requests whose connection is dropped halfway.
    #[serde(default, deserialize_with = "de_fraction")]
    pub disconnect_rate: f64,
    /// Fraction of streamed requests that stop sending after the first token, forever.
    #[serde(default, deserialize_with = "de_fraction")]
    pub stall_rate: f64,
    /// Fraction of streamed requests with a chunk that is not JSON.
    #[serde(default, deserialize_with = "de_fraction")]
    pub malformed_rate: f64,
    /// Seed for jitter and faults.
    #[serde(default)]
    pub seed: u64,
    /// Streams served at once, like a server's batch slots: further requests wait in arrival
    /// order for a free slot, and the wait adds to their time to first token. Without it, no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Positive>,
    /// A JSON-lines file of `{"prompt": ..., "answer": ...}`: a request whose last message
    /// (or prompt) is one of the prompts gets that answer as its content, so accuracy
    /// checks can be tested against a known truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<PathBuf>,
    /// Prefill cost: each prompt token not served from the prefix cache adds this to the
    /// time to first token, in milliseconds.
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "de_millis"
    )]
    pub prefill_ms_per_token: f64,
    /// A prefix cache of token blocks: requests whose leading blocks were seen recently
    /// report them as `cached_tokens` and skip their prefill cost. Without it, nothing is
    /// cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache: Option<MockPrefixCache>,
    /// Milliseconds from start until the model is served, like a frontend that is healthy
    /// before a worker has registered the model (Dynamo's): until then `/v1/models` lists no
    /// model and completions are refused with 404.
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "de_millis"
    )]
    pub model_ready_ms: f64,
    /// The model `/v1/models` lists (it answers requests for any). Without it,
    /// `harness-mock`; harness sets the experiment's `model.name` when it starts the mock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// The mock's prefix cache: a least-recently-used cache of `blocks` blocks of
/// `block_tokens` tokens (the mock's tokens are words), keyed like vLLM's by a hash of the
/// block and every block before it. A request's cached tokens are its leading blocks found
/// in the cache (at most all but its last token, as vLLM computes at least one); its prompt
/// and reply blocks are then stored, on arrival, so the cache's state follows the arrival
/// order alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MockPrefixCache {
    /// Capacity in blocks.
    pub blocks: std::num::NonZeroU32,
    /// Tokens per block (default 16, as vLLM).
    #[serde(default = "default_block_tokens")]
    pub block_tokens: std::num::NonZeroU32,
}

impl MockPrefixCache {
    /// A cache of `blocks` blocks of 16 tokens.
    pub fn new(blocks: std::num::NonZeroU32) -> Self {
        MockPrefixCache {
            blocks,
            block_tokens: default_block_tokens(),
        }
    }
}

fn default_block_tokens() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(16).unwrap_or(std::num::NonZeroU32::MIN)
}

impl Default for MockDeployment {
    fn default() -> Self {
        MockDeployment {
            ttft_ms: 0.0,
            itl_ms: 0.0,
            jitter: 0.0,
            output_tokens: None,
            error_rate: 0.0,
            error_status: default_error_status(),
            disconnect_rate: 0.0,
            stall_rate: 0.0,
            malformed_rate: 0.0,
            seed: 0,
            slots: None,
            answers: None,
            prefill_ms_per_token: 0.0,
            prefix_cache: None,
            model_ready_ms: 0.0,
            model: None,
        }
    }
}

impl MockDeployment {
    /// This configuration, listing `name` as its model unless it names one.
    #[must_use]
    pub fn serving(mut self, name: &str) -> Self {
        self.model.get_or_insert_with(|| name.to_owned());
        self
    }

    /// The command line that serves this mock on a free port: `<program> mock --port {port}
    /// --config <json>`, the `harness mock` subcommand (`{port}` is filled in by the
    /// backend).
    pub fn command(&self, program: &std::path::Path) -> Vec<String> {
        let json = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        vec![
            program.display().to_string(),
            "mock".into(),
            "--port".into(),
            "{port}".into(),
            "--config".into(),
            json,
        ]
    }

    /// Checks what single fields cannot: the fault rates add up to at most 1.
    ///
    /// # Errors
    /// A message naming the rates.
    pub fn check(&self) -> Result<(), String> {
        let sum = self.error_rate + self.disconnect_rate + self.stall_rate + self.malformed_rate;
        if sum > 1.0 + 1e-9 {
            return Err(format!(
                "error_rate + disconnect_rate + stall_rate + malformed_rate must be at most 1, got {sum}"
            ));
        }
        Ok(())
    }
}

fn default_error_status() -> u16 {
    500
}

fn de_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !(v.is_finite() && (0.0..=3_600_000.0).contains(&v)) {
        return Err(serde::de::Error::custom(format!(
            "expected milliseconds from 0 to 3600000, got {v}"
        )));
    }
    Ok(v)
}

fn de_fraction<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
        return Err(serde::de::Error::custom(format!(
            "expected a fraction from 0 to 1, got {v}"
        )));
    }
    Ok(v)
}

fn de_status<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = u16::deserialize(d)?;
    if !(400..=599).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "expected an HTTP error status from 400 to 599, got {v}"
        )));
    }
    Ok(v)
}

impl Default for Deployment {
    fn default() -> Self {
        Deployment::Url {
            url: "http://127.0.0.1:8000".into(),
            health: None,
            gpus: None,
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
    /// GPUs the server uses, for per-GPU throughput.
    pub gpus: Option<u32>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mock: Option<MockDeployment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifests: Option<String>,
}

impl Deployment {
    /// The GPUs serving the model, when the experiment says.
    pub fn gpus(&self) -> Option<u32> {
        match self {
            Deployment::Url { gpus, .. } => *gpus,
            Deployment::Command(c) => c.gpus,
            Deployment::Mock(_) => None,
            Deployment::Manifests { gpus, .. } => *gpus,
        }
    }

    /// The manifests' YAML: the text itself, or the file's contents (read now).
    ///
    /// # Errors
    /// When the file cannot be read; `None` for other deployments.
    pub fn manifests_yaml(&self) -> Option<std::io::Result<String>> {
        match self {
            Deployment::Manifests { manifests, .. } if manifests.contains('\n') => {
                Some(Ok(manifests.clone()))
            }
            Deployment::Manifests { manifests, .. } => Some(std::fs::read_to_string(manifests)),
            _ => None,
        }
    }
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
        if r.gpus == Some(0) {
            return Err("deployment.gpus must be at least 1; leave it out when unknown".into());
        }
        if let Some(manifests) = r.manifests {
            if r.command.is_some() || r.mock.is_some() {
                return Err(
                    "deployment takes one of `url`, `command`, `mock` or `manifests` \
                     (`url` with `manifests`: where the deployed model is reached)"
                        .into(),
                );
            }
            if let Some(url) = &r.url {
                check_http_url(url).map_err(|e| format!("deployment.url: {e}"))?;
            }
            if r.port.is_some() || !r.env.is_empty() || r.cwd.is_some() || r.health.is_some() {
                return Err(
                    "deployment.port, env, cwd and health apply to `command`, not to `manifests` \
                     (readiness comes from the objects' status)"
                        .into(),
                );
            }
            if manifests.trim().is_empty() {
                return Err("deployment.manifests needs a file or YAML text".into());
            }
            return Ok(Deployment::Manifests {
                manifests,
                gpus: r.gpus,
                url: r.url.map(|u| u.trim_end_matches('/').to_owned()),
            });
        }
        if let Some(mock) = r.mock {
            if r.gpus.is_some() {
                return Err(
                    "deployment.gpus applies to `url` and `command`; the mock uses none".into(),
                );
            }
            if r.url.is_some() || r.command.is_some() {
                return Err("deployment takes one of `url`, `command` or `mock`".into());
            }
            if r.port.is_some() || !r.env.is_empty() || r.cwd.is_some() || r.health.is_some() {
                return Err(
                    "deployment.port, env, cwd and health apply to `command`, not to `mock`".into(),
                );
            }
            mock.check().map_err(|e| format!("deployment.mock: {e}"))?;
            return Ok(Deployment::Mock(mock));
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
                    gpus: r.gpus,
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
                    gpus: r.gpus,
                }))
            }
            (Some(_), Some(_)) => Err("deployment takes one of `url`, `command` or `mock`".into()),
            (None, None) => Err(
                "deployment needs `url` (a running server), `command` (a local process to start) \
                 or `mock` (the built-in mock server)"
                    .into(),
            ),
        }
    }
}

impl From<Deployment> for RawDeployment {
    fn from(d: Deployment) -> Self {
        match d {
            Deployment::Url { url, health, gpus } => RawDeployment {
                url: Some(url),
                health,
                gpus,
                ..Default::default()
            },
            Deployment::Command(c) => RawDeployment {
                command: Some(c.command),
                port: c.port,
                health: c.health,
                env: c.env,
                cwd: c.cwd,
                gpus: c.gpus,
                ..Default::default()
            },
            Deployment::Mock(m) => RawDeployment {
                mock: Some(m),
                ..Default::default()
            },
            Deployment::Manifests {
                manifests,
                gpus,
                url,
            } => RawDeployment {
                manifests: Some(manifests),
                gpus,
                url,
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
    /// Kubernetes: the namespace of everything the run creates (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Kubernetes: the harness image that runs cells in the cluster (`harness agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Kubernetes: run each cell's steps in a Job next to the model (default true), so no
    /// load goes through a port-forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster: Option<bool>,
    /// Kubernetes: client pods per cell (an Indexed Job; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Positive>,
    /// Kubernetes: the service account of the Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Kubernetes: a Secret whose keys become environment variables of the Jobs (object
    /// store credentials, API keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_secret: Option<String>,
    /// Kubernetes: how long a pod of the model or of a Job may stay unschedulable, unable to
    /// pull its image or crash-looping before it fails (default 3m; autoscalers add nodes
    /// in minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast_grace: Option<HumanDuration>,
    /// Kubernetes: the Jobs' container resources, as in a pod spec (`{requests: {cpu: "2",
    /// memory: 1Gi}, limits: {...}}`; default requests 2 CPUs and 512Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<serde_json::Value>,
    /// Kubernetes: Secrets to pull the harness image with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Kubernetes: the Jobs' node selector (e.g. the model's node pool, so load comes from
    /// next to it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Kubernetes: the Jobs' tolerations, as in a pod spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<serde_json::Value>,
    /// Kubernetes: the Jobs' affinity, as in a pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<serde_json::Value>,
}

/// The image `harness agent` runs from when `backend.image` is not given.
pub const DEFAULT_IMAGE: &str =
    concat!("ghcr.io/harness-bench/harness:", env!("CARGO_PKG_VERSION"));

impl BackendConfig {
    /// The namespace (Kubernetes).
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
    /// The harness image (Kubernetes).
    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }
    /// Whether cells run in the cluster (Kubernetes).
    pub fn in_cluster(&self) -> bool {
        self.kind == BackendKind::Kubernetes && self.in_cluster.unwrap_or(true)
    }
    /// Client pods per cell.
    pub fn clients(&self) -> u64 {
        self.clients.map_or(1, |c| u64::from(c.get()))
    }
    /// How long a pod may be stuck before it fails (Kubernetes; default 3 minutes).
    pub fn fail_fast_grace(&self) -> std::time::Duration {
        self.fail_fast_grace
            .map_or(std::time::Duration::from_secs(180), HumanDuration::get)
    }

    /// Cross-field rules: Kubernetes settings need the Kubernetes backend; names are
    /// DNS-1123 labels.
    pub(crate) fn check(&self) -> std::result::Result<(), (String, String)> {
        let k8s_fields = [
            ("namespace", self.namespace.is_some()),
            ("image", self.image.is_some()),
            ("in_cluster", self.in_cluster.is_some()),
            ("clients", self.clients.is_some()),
            ("service_account", self.service_account.is_some()),
            ("env_secret", self.env_secret.is_some()),
            ("fail_fast_grace", self.fail_fast_grace.is_some()),
            ("resources", self.resources.is_some()),
            ("image_pull_secrets", !self.image_pull_secrets.is_empty()),
            ("node_selector", !self.node_selector.is_empty()),
            ("tolerations", !self.tolerations.is_empty()),
            ("affinity", self.affinity.is_some()),
        ];
        if self.kind == BackendKind::Local
            && let Some((f, _)) = k8s_fields.iter().find(|f| f.1)
        {
            return Err((
                format!("backend.{f}"),
                "applies to `kind: kubernetes` only".into(),
            ));
        }
        for (field, value) in [
            ("namespace", &self.namespace),
            ("service_account", &self.service_account),
            ("env_secret", &self.env_secret),
        ] {
            if let Some(v) = value
                && !is_dns_label(v)
            {
                return Err((
                    format!("backend.{field}"),
                    format!(
                        "`{v}` is not a Kubernetes name (lower-case letters, digits and `-`, at most 63)"
                    ),
                ));
            }
        }
        if self
            .image
            .as_deref()
            .is_some_and(|i| i.trim().is_empty() || i.contains(char::is_whitespace))
        {
            return Err(("backend.image".into(), "expected an image reference".into()));
        }
        for s in &self.image_pull_secrets {
            if !is_dns_label(s) {
                return Err((
                    "backend.image_pull_secrets".into(),
                    format!("`{s}` is not a Kubernetes name"),
                ));
            }
        }
        if let Some(r) = &self.resources {
            let ok = r.as_object().is_some_and(|m| {
                m.iter().all(|(k, v)| {
                    matches!(k.as_str(), "requests" | "limits")
                        && v.as_object()
                            .is_some_and(|q| q.values().all(|x| x.is_string() || x.is_number()))
                })
            });
            if !ok {
                return Err((
                    "backend.resources".into(),
                    "expected `{requests: {cpu: \"2\", memory: 1Gi}, limits: {...}}`".into(),
                ));
            }
        }
        if let Some(t) = self.tolerations.iter().find(|t| !t.is_object()) {
            return Err((
                "backend.tolerations".into(),
                format!(
                    "expected objects such as `{{key: gpu, operator: Exists, effect: NoSchedule}}`, got `{t}`"
                ),
            ));
        }
        if self.affinity.as_ref().is_some_and(|a| !a.is_object()) {
            return Err((
                "backend.affinity".into(),
                "expected an object, as a pod spec's `affinity`".into(),
            ));
        }
        if self.clients.is_some_and(|c| c.get() > 256) {
            return Err((
                "backend.clients".into(),
                "at most 256 client pods per cell".into(),
            ));
        }
        Ok(())
    }
}

/// Whether `s` is a DNS-1123 label.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The backend kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackendKind {
    /// Child processes of harness on this machine.
    #[default]
    Local,
    /// A Kubernetes cluster (kubeconfig or in-cluster configuration).
    Kubernetes,
    /// A kind a program registers itself (`harness::AppBuilder::backend_kind`).
    #[serde(untagged)]
    Other(Name),
}

/// How much load each cell gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Start the load gradually over this time instead of all at once: at a concurrency the
    /// clients start evenly spread over it; at a request rate the rate rises linearly from 0.
    /// Without it a closed loop starts every request together, and with a server that
    /// answers them alike the whole sweep keeps arriving in waves. Pair it with
    /// `warmup_requests` to leave the ramp out of the statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<HumanDuration>,
    /// Seed for prompts and arrivals, so a run can be repeated exactly.
    #[serde(default)]
    pub seed: u64,
    /// How requests arrive when a `request_rate` is swept.
    #[serde(default)]
    pub arrival: Arrival,
    /// Streamed responses (SSE), the default; `false` for whole responses.
    #[serde(default = "default_true")]
    pub stream: bool,
    /// The longest one request may take, body included.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Extra top-level request body fields, e.g. `{ignore_eos: true, min_tokens: 128}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_body: BTreeMap<String, serde_json::Value>,
    /// Extra HTTP headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The environment variable that holds the API key (sent as a bearer token). Only the
    /// variable's name is stored, never the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Before each cell, two requests check that the server honours OSL and that its token
    /// count of the prompt agrees with the tokenizer; mismatches become warnings.
    #[serde(default = "default_true")]
    pub preflight: bool,
    /// Spread of input lengths: each request's ISL is drawn from a normal distribution with
    /// the cell's ISL as mean and this standard deviation, in tokens (seeded).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_stddev"
    )]
    pub isl_stddev: Option<f64>,
    /// Spread of output lengths, as `isl_stddev`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_stddev"
    )]
    pub osl_stddev: Option<f64>,
    /// Prompts from a JSON-lines file instead of synthetic ones: one object per line with
    /// `prompt` (text) and optionally `output_tokens`; used in order, cycling. The cell's OSL
    /// applies to lines without `output_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<PathBuf>,
}

fn de_stddev<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = f64::deserialize(d)?;
    if !v.is_finite() || v < 0.0 {
        return Err(serde::de::Error::custom(format!(
            "expected a standard deviation in tokens, 0 or more, got {v}"
        )));
    }
    Ok(Some(v))
}

impl Default for Load {
    fn default() -> Self {
        Load {
            requests: None,
            duration: None,
            warmup_requests: 0,
            ramp: None,
            seed: 0,
            arrival: Arrival::default(),
            stream: true,
            request_timeout: default_request_timeout(),
            extra_body: BTreeMap::new(),
            headers: BTreeMap::new(),
            api_key_env: None,
            preflight: true,
            isl_stddev: None,
            osl_stddev: None,
            dataset: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Server metrics scraped during each cell: the deployment's own Prometheus endpoint when
/// it answers, and any other target listed. On by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Telemetry {
    /// Scrape at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Time between scrapes (10 ms at least).
    #[serde(
        default = "default_scrape_interval",
        deserialize_with = "de_scrape_interval"
    )]
    pub interval: HumanDuration,
    /// Scrape the deployment's endpoint at `metrics_path`, when it answers there with
    /// Prometheus metrics (quietly left out when it does not).
    #[serde(default = "default_true")]
    pub endpoint: bool,
    /// The path of the deployment's metrics.
    #[serde(default = "default_metrics_path")]
    pub metrics_path: String,
    /// More Prometheus endpoints: a DCGM exporter, Dynamo's frontend, a router.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TelemetryTarget>,
    /// The largest exposition read from one scrape, in bytes; a larger one is a gap.
    #[serde(default = "default_max_scrape_bytes")]
    pub max_bytes: Positive64,
    /// How far (relative) a server's request or token count over a cell may be from the
    /// client's before the cell's notes say so.
    #[serde(default = "default_tolerance", deserialize_with = "de_tolerance")]
    pub tolerance: f64,
}

/// A `u64` of 1 or more.
pub type Positive64 = std::num::NonZeroU64;

/// One more Prometheus endpoint to scrape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TelemetryTarget {
    /// A short name for tables and notes (default: the URL's host and port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// The URL of its metrics, `http://host:port/metrics`.
    #[serde(deserialize_with = "de_target_url")]
    pub url: String,
}

impl TelemetryTarget {
    /// A target at `url` (not checked; experiments check theirs when read).
    pub fn new(url: impl Into<String>) -> Self {
        TelemetryTarget {
            name: None,
            url: url.into(),
        }
    }

    /// Its name: the one given, else the URL's host and port.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.to_string(),
            None => {
                let rest = self
                    .url
                    .split_once("://")
                    .map_or(self.url.as_str(), |x| x.1);
                rest.split('/').next().unwrap_or(rest).to_owned()
            }
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            enabled: true,
            interval: default_scrape_interval(),
            endpoint: true,
            metrics_path: default_metrics_path(),
            targets: Vec::new(),
            max_bytes: default_max_scrape_bytes(),
            tolerance: default_tolerance(),
        }
    }
}

impl Telemetry {
    fn is_default(&self) -> bool {
        *self == Telemetry::default()
    }
}

fn default_scrape_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn de_scrape_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    let v = HumanDuration::deserialize(d)?;
    if v.get() < Duration::from_millis(10) {
        return Err(serde::de::Error::custom(format!(
            "a scrape interval of {:?} is too short: 10ms at least",
            v.get()
        )));
    }
    Ok(v)
}

fn default_metrics_path() -> String {
    "/metrics".into()
}

fn default_max_scrape_bytes() -> Positive64 {
    Positive64::new(16 << 20).unwrap_or(Positive64::MIN)
}

fn default_tolerance() -> f64 {
    0.01
}

fn de_tolerance<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "expected a fraction from 0 to 1 (0.01 is 1%), got {v}"
        )));
    }
    Ok(v)
}

fn de_target_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    check_http_url(&url).map_err(serde::de::Error::custom)?;
    Ok(url)
}

fn default_request_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(600))
}

/// How requests arrive in an open-loop (request rate) cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Arrival {
    /// Exponential gaps with mean `1/rate` (seeded).
    #[default]
    Poisson,
    /// Evenly spaced, every `1/rate` seconds.
    Constant,
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
    /// Objectives from optional limits.
    pub fn new(
        ttft: Option<Duration>,
        itl: Option<Duration>,
        request_latency: Option<Duration>,
    ) -> Self {
        Slo {
            ttft: ttft.map(HumanDuration),
            itl: itl.map(HumanDuration),
            request_latency: request_latency.map(HumanDuration),
        }
    }

    /// Whether any objective is set.
    pub fn is_set(&self) -> bool {
        self != &Slo::default()
    }

    fn is_unset(&self) -> bool {
        !self.is_set()
    }

    /// The TTFT limit in milliseconds.
    pub fn ttft_ms(&self) -> Option<f64> {
        self.ttft.map(|d| d.get().as_secs_f64() * 1e3)
    }

    /// The ITL limit in milliseconds.
    pub fn itl_ms(&self) -> Option<f64> {
        self.itl.map(|d| d.get().as_secs_f64() * 1e3)
    }

    /// The request latency limit in milliseconds.
    pub fn request_latency_ms(&self) -> Option<f64> {
        self.request_latency.map(|d| d.get().as_secs_f64() * 1e3)
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
    /// Store options (`endpoint`, `region`, `allow_http`, `retries`, `retry_timeout`, ...).
    /// Values of secret-looking options are redacted from everything the run stores;
    /// credentials are better left to the environment (`AWS_SECRET_ACCESS_KEY`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// A local folder for results the remote store cannot take during an outage
    /// (default `./harness-spool`); they are uploaded when it answers again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<String>,
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
