//! Built-in steps: deploy and tear down a workload, wait for an existing server, run a
//! command.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;

use crate::backend::{BackendExt, Endpoint, Readiness, Workload, WorkloadSpec};
use crate::config::{Deployment as DeploymentConfig, Experiment};
use crate::error::{Error, Result};
use crate::pipeline::{StepFactory, StepSource};
use crate::step::{Step, StepContext, StepOutput};

/// A workload that a setup step launches and a teardown step stops; make both steps from
/// one value so they share the handle.
///
/// The deploy step stores the workload's [`Endpoint`] in the run's resources. The teardown
/// step stores the workload's log as the artifact `<step>/workload.log`, then tears it down;
/// it runs even when deploying failed midway.
#[derive(Debug, Clone)]
pub struct ManagedWorkload {
    spec: WorkloadSpec,
    ready_timeout: Duration,
    reached_at: Option<Endpoint>,
    slot: Arc<Mutex<Option<Workload>>>,
}

impl ManagedWorkload {
    /// A deployment of `spec` that must become ready within `ready_timeout`.
    pub fn new(spec: WorkloadSpec, ready_timeout: Duration) -> Self {
        ManagedWorkload {
            spec,
            ready_timeout,
            reached_at: None,
            slot: Arc::default(),
        }
    }

    /// Clients reach the workload at `endpoint`, not where the backend says it serves (a
    /// gateway or Ingress in front of it).
    pub fn reached_at(mut self, endpoint: Endpoint) -> Self {
        self.reached_at = Some(endpoint);
        self
    }

    /// The setup step, named `deploy`.
    pub fn deploy_step(&self) -> DeployStep {
        DeployStep(self.clone())
    }

    /// The teardown step, named `undeploy`.
    pub fn teardown_step(&self) -> UndeployStep {
        UndeployStep(self.clone())
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Workload>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Launches a [`ManagedWorkload`] and waits until it is ready.
#[derive(Debug)]
pub struct DeployStep(ManagedWorkload);

#[async_trait]
impl Step for DeployStep {
    fn name(&self) -> &str {
        "deploy"
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let d = &self.0;
        let spec = d
            .spec
            .clone()
            .label("harness/run", cx.run().run_id())
            .label("harness/experiment", cx.experiment().name.as_str());
        let workload = cx.backend().launch(&spec).await?;
        *d.slot() = Some(workload.clone());
        let start = Instant::now();
        let served = cx
            .backend()
            .wait_ready(&workload, d.ready_timeout, cx.cancel())
            .await?;
        let endpoint = d.reached_at.clone().or(served);
        let mut out = StepOutput::new().metric("deploy.ready_s", start.elapsed().as_secs_f64());
        // What was deployed (images, GPUs, replicas), kept with the run.
        let deployed = cx.backend().details(&workload).await?;
        if !deployed.is_null() {
            let json = serde_json::to_vec_pretty(&deployed)
                .map_err(|e| Error::failed_from("encoding the deployment", e))?;
            out = out.artifact(cx.artifacts().put("deployed.json", json.into()).await?);
        }
        if let Some(ep) = endpoint {
            out = out.note(format!("`{}` ready at {}", spec.name, ep.base_url));
            cx.resources().insert(ep);
        }
        Ok(out)
    }
}

/// Collects the log of a [`ManagedWorkload`] and tears it down.
#[derive(Debug)]
pub struct UndeployStep(ManagedWorkload);

#[async_trait]
impl Step for UndeployStep {
    fn name(&self) -> &str {
        "undeploy"
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let Some(workload) = self.0.slot().clone() else {
            return Ok(StepOutput::new().note("nothing was deployed"));
        };
        let mut out = StepOutput::new();
        match cx.backend().logs(&workload).await {
            Ok(log) => out = out.artifact(cx.artifacts().put("workload.log", log).await?),
            Err(e) => out = out.note(format!("could not collect the log: {e}")),
        }
        cx.backend().teardown(&workload).await?;
        *self.0.slot() = None;
        Ok(out)
    }
}

/// Waits for a server that harness did not start, and shares its [`Endpoint`].
#[derive(Debug, Clone)]
pub struct WaitReadyStep {
    endpoint: Endpoint,
    health: Option<String>,
    timeout: Duration,
}

impl WaitReadyStep {
    /// Waits up to `timeout` for `GET health` on `endpoint` to answer 2xx; without a health
    /// path, only shares the endpoint.
    pub fn new(endpoint: Endpoint, health: Option<String>, timeout: Duration) -> Self {
        WaitReadyStep {
            endpoint,
            health,
            timeout,
        }
    }
}

#[async_trait]
impl Step for WaitReadyStep {
    fn name(&self) -> &str {
        "wait-ready"
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let start = Instant::now();
        if let Some(path) = &self.health {
            let probe = Readiness::Http { path: path.clone() };
            let mut interval = Duration::from_millis(50);
            while !probe.probe(&self.endpoint, Duration::from_secs(5)).await? {
                if start.elapsed() >= self.timeout {
                    return Err(Error::Timeout {
                        what: format!("waiting for {} to answer 2xx", self.endpoint.url(path)),
                        after: self.timeout,
                    });
                }
                tokio::select! {
                    () = cx.cancel().cancelled() => return Err(Error::Cancelled { what: "waiting for the endpoint".into() }),
                    () = tokio::time::sleep(interval) => {}
                }
                interval = (interval * 2).min(Duration::from_secs(2));
            }
        }
        cx.resources().insert(self.endpoint.clone());
        Ok(StepOutput::new().metric("deploy.ready_s", start.elapsed().as_secs_f64()))
    }
}

/// The steps that bring up and take down an experiment's deployment.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeploymentSteps {
    /// Runs in setup: starts the deployment or waits for it, and shares its [`Endpoint`].
    pub setup: Arc<dyn Step>,
    /// Runs in teardown, when harness started the deployment.
    pub teardown: Option<Arc<dyn Step>>,
}

impl DeploymentSteps {
    /// Steps of your own: `setup` shares the deployment's [`Endpoint`] in the run's
    /// resources; `teardown`, when given, runs at the end even when setup failed.
    pub fn new(setup: Arc<dyn Step>, teardown: Option<Arc<dyn Step>>) -> Self {
        DeploymentSteps { setup, teardown }
    }

    /// The setup and teardown steps for an experiment's `deployment` section, with its
    /// variables substituted into the command, environment, URL and manifests
    /// ([`Experiment::substitute`]). A mock
    /// deployment (`deployment: {mock: ...}`) runs `<mock_program> mock` as a process (see
    /// [`MockDeployment::command`](crate::config::MockDeployment::command)); the `harness`
    /// program serves it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the deployment's URL is invalid, its manifests cannot
    /// be read, or it is a mock and `mock_program` is `None`.
    pub fn for_experiment(exp: &Experiment, mock_program: Option<&Path>) -> Result<Self> {
        let ready = exp.policy.ready_timeout.get();
        match &exp.deployment {
            DeploymentConfig::Url { url, health, .. } => Ok(DeploymentSteps {
                setup: Arc::new(WaitReadyStep::new(
                    Endpoint::new(exp.substitute(url))?,
                    health.clone(),
                    ready,
                )),
                teardown: None,
            }),
            DeploymentConfig::Command(c) => {
                let readiness = match &c.health {
                    Some(path) => Readiness::Http { path: path.clone() },
                    None => Readiness::Tcp,
                };
                let command: Vec<String> = c.command.iter().map(|a| exp.substitute(a)).collect();
                let mut spec = WorkloadSpec::process("deployment", command)
                    .serving(c.port.unwrap_or(0), readiness);
                for (k, v) in &c.env {
                    spec = spec.env(k, exp.substitute(v));
                }
                if let Some(dir) = &c.cwd {
                    spec = spec.cwd(exp.substitute(&dir.display().to_string()));
                }
                Ok(DeploymentSteps::for_workload(spec, ready))
            }
            DeploymentConfig::Manifests { manifests, url, .. } => {
                let yaml = exp
                    .deployment
                    .manifests_yaml()
                    .unwrap_or_else(|| Ok(String::new()))
                    .map_err(|e| {
                        Error::invalid(
                            "deployment.manifests",
                            format!("cannot read `{manifests}`: {e}"),
                        )
                    })?;
                let spec = WorkloadSpec::manifests("deployment", exp.substitute(&yaml))
                    .serving(0, Readiness::Running);
                let mut d = ManagedWorkload::new(spec, ready);
                if let Some(url) = url {
                    d = d.reached_at(Endpoint::new(exp.substitute(url))?);
                }
                Ok(DeploymentSteps::for_managed(d))
            }
            DeploymentConfig::Mock(cfg) => {
                let program = mock_program.ok_or_else(|| {
                    Error::invalid(
                        "deployment.mock",
                        "starting the mock needs the program that serves it (`harness mock`): \
                         pass it to DeploymentSteps::for_experiment",
                    )
                })?;
                let cfg = cfg.clone().serving(exp.model.name.as_str());
                let spec = WorkloadSpec::process("mock", cfg.command(program)).serving(
                    0,
                    Readiness::Http {
                        path: "/health".into(),
                    },
                );
                Ok(DeploymentSteps::for_workload(spec, ready))
            }
        }
    }

    /// Brings the deployment up as its setup step does, alone, and leaves it up: for a
    /// deployment that outlives this process (a workflow's deploy task; a later step or
    /// `harness k8s cleanup` removes it). The endpoint it reports. When setup fails, the
    /// teardown step runs, so nothing half-deployed stays.
    ///
    /// # Errors
    /// The setup step's error, or [`Error::Failed`] when it reported no endpoint.
    pub async fn deploy(&self, run: &crate::RunContext) -> Result<Endpoint> {
        let cx = run.step(crate::Stage::Setup, None, self.setup.name())?;
        if let Err(e) = self.setup.run(&cx).await {
            if let Some(teardown) = &self.teardown {
                let cx = run.step(crate::Stage::Teardown, None, teardown.name())?;
                if let Err(t) = teardown.run(&cx).await {
                    tracing::warn!(error = %t, "could not take the deployment down");
                }
            }
            return Err(e);
        }
        run.resources()
            .get::<Endpoint>()
            .map(|e| (*e).clone())
            .ok_or_else(|| Error::failed("deployment", "the setup step reported no endpoint"))
    }

    /// Steps that launch `spec` through the backend, wait up to `ready_timeout`, and tear
    /// it down at the end.
    pub fn for_workload(spec: WorkloadSpec, ready_timeout: Duration) -> Self {
        Self::for_managed(ManagedWorkload::new(spec, ready_timeout))
    }

    /// The setup and teardown steps of `d`.
    pub fn for_managed(d: ManagedWorkload) -> Self {
        DeploymentSteps {
            setup: Arc::new(d.deploy_step()),
            teardown: Some(Arc::new(d.teardown_step())),
        }
    }
}

/// Turns the files a command left in its output folder (`{out}`) into the cell's results:
/// records and statistics stored through the context, metrics and notes returned.
///
/// harness-llm implements it for other tools' exports (aiperf, genai-perf, vLLM, guidellm,
/// inference-perf); register a [`ResultHookFactory`] with
/// [`CommandStep::factory_with_results`] so experiment files can ask for it.
#[async_trait]
pub trait ResultHook: fmt::Debug + Send + Sync {
    /// Reads `out_dir` after the command exited 0.
    ///
    /// # Errors
    /// The cell fails with the error: a missing or malformed export, a store failure.
    async fn collect(&self, cx: &StepContext, out_dir: &Path) -> Result<StepOutput>;
}

/// Makes a [`ResultHook`] from a command step's `results` parameter; an `Err` is the
/// message for a located configuration error.
pub type ResultHookFactory = Arc<
    dyn Fn(&serde_json::Value) -> std::result::Result<Arc<dyn ResultHook>, String> + Send + Sync,
>;

/// Runs a process through the backend, once per invocation, and fails unless it exits 0.
///
/// In an experiment:
///
/// ```yaml
/// steps:
///   - kind: command
///     name: record-gpu
///     run: [sh, -c, "nvidia-smi -q > /dev/null; echo {cell}"]
///     env: {FOO: bar}
/// ```
///
/// `{cell}`, `{run}` and every cell parameter (`{concurrency}`, `{isl}`, `{osl}`, ...) are
/// filled into the arguments and environment, `{endpoint}` is the base URL of the
/// deployment when there is one, `{model}` the experiment's model name, and `{out}` a fresh,
/// empty folder for the command's
/// files. The output is stored as the artifact `output.log`, and every file left in `{out}`
/// as `out/<path>`. With a [`ResultHook`] (`results:` in an experiment, e.g.
/// `results: {import: aiperf}`) those files also become the cell's records and statistics.
///
/// With `image:`, the command runs in a container of that image on a backend that runs
/// containers (Kubernetes: a Job in the run's namespace, next to the model). `{out}` is a
/// local folder: it serves commands run by a local backend.
#[derive(Debug, Clone)]
pub struct CommandStep {
    name: String,
    run: Vec<String>,
    image: Option<String>,
    env: BTreeMap<String, String>,
    results: Option<Arc<dyn ResultHook>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandParams {
    run: Vec<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    results: Option<serde_json::Value>,
}

/// Files bigger than this in `{out}` are not kept as artifacts (a note says so).
const MAX_KEPT_FILE: u64 = 256 << 20;

impl CommandStep {
    /// A step named `name` that runs `run`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `run` is empty.
    pub fn new(name: impl Into<String>, run: Vec<String>) -> Result<Self> {
        let name = name.into();
        if run.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(Error::invalid(
                format!("command step `{name}`"),
                "`run` needs a program",
            ));
        }
        Ok(CommandStep {
            name,
            run,
            image: None,
            env: BTreeMap::new(),
            results: None,
        })
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Runs the command in a container of `image` (a backend that runs containers: on
    /// Kubernetes, a Job next to the model). `{out}` stays a local folder: a tool in a
    /// container writes its results to the object store instead.
    #[must_use]
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Turns the files the command leaves in `{out}` into results with `hook`.
    #[must_use]
    pub fn results(mut self, hook: Arc<dyn ResultHook>) -> Self {
        self.results = Some(hook);
        self
    }

    /// The factory for [`StepRegistry`](crate::StepRegistry): kind `command`, without
    /// result hooks (a `results` parameter is refused).
    pub fn factory() -> StepFactory {
        Self::make_factory(None)
    }

    /// The factory for kind `command` whose `results` parameter is read by `hooks`.
    pub fn factory_with_results(hooks: ResultHookFactory) -> StepFactory {
        Self::make_factory(Some(hooks))
    }

    fn make_factory(hooks: Option<ResultHookFactory>) -> StepFactory {
        Arc::new(move |spec, source: &StepSource<'_>| {
            let p: CommandParams = source.params(spec)?;
            if p.run.first().is_none_or(|s| s.trim().is_empty()) {
                return Err(source.error(
                    "run",
                    "needs a program and its arguments, e.g. [sh, -c, \"echo hi\"]",
                ));
            }
            let mut step = CommandStep::new(spec.step_name(), p.run)?;
            step.env = p.env;
            if let Some(image) = p.image {
                if image.trim().is_empty() || image.contains(char::is_whitespace) {
                    return Err(source.error("image", "expected an image reference"));
                }
                step.image = Some(image);
            }
            if let Some(results) = &p.results {
                let hooks = hooks.as_ref().ok_or_else(|| {
                    source.error("results", "no result importers are registered here")
                })?;
                step.results = Some(hooks(results).map_err(|m| source.error("results", m))?);
            }
            Ok(Arc::new(step) as Arc<dyn Step>)
        })
    }
}

/// A fresh folder for one invocation's files.
async fn out_dir(cx: &StepContext, step: &str) -> Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cell = cx.cell().map(|c| c.id.as_str()).unwrap_or("run");
    let safe = crate::local::path_safe(&format!("{}-{cell}-{step}", cx.run().run_id()));
    let dir = std::env::temp_dir().join(format!("harness-out-{}-{n}-{safe}", std::process::id()));
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| Error::failed_from(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

/// Every regular file under `dir`, with its path relative to `dir` ('/'-separated).
fn files_under(dir: &Path) -> Vec<(String, PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    let rel = path
                        .strip_prefix(dir)
                        .map(|r| {
                            r.components()
                                .map(|c| c.as_os_str().to_string_lossy())
                                .collect::<Vec<_>>()
                                .join("/")
                        })
                        .unwrap_or_default();
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push((rel, path, len));
                }
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Stores the files in `dir` as artifacts `out/<path>`.
async fn keep_files(cx: &StepContext, dir: &Path, mut out: StepOutput) -> Result<StepOutput> {
    let d = dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || files_under(&d))
        .await
        .map_err(|e| Error::failed_from("listing the command's files", e))?;
    for (rel, path, len) in files {
        if len > MAX_KEPT_FILE {
            out = out.note(format!("{rel} ({len} bytes) is too big to keep"));
            continue;
        }
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| Error::failed_from(format!("reading {}", path.display()), e))?;
        out = out.artifact(
            cx.artifacts()
                .put(&format!("out/{rel}"), bytes.into())
                .await?,
        );
    }
    Ok(out)
}

#[async_trait]
impl Step for CommandStep {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let endpoint = cx
            .resources()
            .get::<Endpoint>()
            .map(|e| e.base_url.clone())
            .unwrap_or_default();
        let dir = out_dir(cx, &self.name).await?;
        let result = self.run_in(cx, &endpoint, &dir).await;
        // The folder is ours: remove it whatever happened.
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            tracing::debug!(dir = %dir.display(), error = %e, "could not remove the output folder");
        }
        result
    }
}

impl CommandStep {
    async fn run_in(&self, cx: &StepContext, endpoint: &str, dir: &Path) -> Result<StepOutput> {
        let out_path = dir.display().to_string();
        let fill = |s: &str| {
            cx.fill(s)
                .replace("{endpoint}", endpoint)
                .replace("{model}", &cx.experiment().model.name)
                .replace("{out}", &out_path)
        };
        let mut spec = WorkloadSpec::process(
            format!("step-{}", self.name),
            self.run.iter().map(|a| fill(a)),
        );
        for (k, v) in &self.env {
            spec = spec.env(k, fill(v));
        }
        if let Some(image) = &self.image {
            spec = spec.image(fill(image));
        }
        let backend = cx.backend();
        let workload = backend.launch(&spec).await?;
        let start = Instant::now();
        let result = backend.wait_finished(&workload, cx.cancel()).await;
        let elapsed = start.elapsed();
        // Keep the output whatever happened, then always tear down.
        let log = backend.logs(&workload).await;
        let teardown = backend.teardown(&workload).await;
        let mut out =
            StepOutput::new().metric(format!("{}.duration_s", self.name), elapsed.as_secs_f64());
        if let Ok(log) = log {
            out = out.artifact(cx.artifacts().put("output.log", log).await?);
        }
        out = keep_files(cx, dir, out).await?;
        result?;
        teardown?;
        if let Some(hook) = &self.results {
            out = out.merge(hook.collect(cx, dir).await?);
        }
        Ok(out)
    }
}
