//! Where work runs: the [`Backend`] trait and what it launches.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// A served API: where requests go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Endpoint {
    /// The base URL, `http://host:port`, without a trailing `/`.
    pub base_url: String,
}

impl Endpoint {
    /// An endpoint at `base_url`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] unless it is an `http://` or `https://` URL with a host.
    pub fn new(base_url: impl Into<String>) -> Result<Self> {
        let base_url = base_url.into();
        crate::config::check_http_url(&base_url)
            .map_err(|reason| Error::invalid("endpoint URL", reason))?;
        Ok(Endpoint {
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }
}

/// This process is one of several clients sharing a cell's load (an Indexed Job's pod):
/// load-generating steps send `1/count` of it and write their records as a shard, which the
/// controlling side merges. Put it in the run's [`Resources`](crate::Resources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This client, from 0.
    pub index: u32,
    /// Clients in all (at least 1).
    pub count: u32,
}

impl Shard {
    /// This client's part of `n` (concurrency, requests): `n / count`, plus one for the first
    /// `n % count` clients, so the parts add up to `n`.
    ///
    /// ```
    /// let parts: Vec<u64> = (0..3).map(|i| harness_core::Shard { index: i, count: 3 }.part(8)).collect();
    /// assert_eq!(parts, [3, 3, 2]);
    /// ```
    pub fn part(&self, n: u64) -> u64 {
        let count = u64::from(self.count.max(1));
        n / count + u64::from(u64::from(self.index) < n % count)
    }
}

/// Where the clients of one cell (see [`Shard`]) meet before they send load. A step that
/// sends load arrives at the gate once its own setup is done (tokenizer, dataset,
/// preflight) and starts at the wall-clock time the gate returns: every client starts at
/// the same moment whatever its setup took, and their records count from the same instant,
/// so merged they measure the real window. Put an `Arc<dyn StartGate>` in the run's
/// [`Resources`](crate::Resources).
///
/// ```
/// use std::sync::Arc;
/// use std::time::{Duration, SystemTime};
/// use harness_core::{CancellationToken, Result, StartGate};
///
/// /// Every client starts one second after it arrives (a gate for one client).
/// #[derive(Debug)]
/// struct Alone;
///
/// #[harness_core::async_trait]
/// impl StartGate for Alone {
///     async fn arrive(&self, _cancel: &CancellationToken) -> Result<SystemTime> {
///         Ok(SystemTime::now() + Duration::from_secs(1))
///     }
/// }
///
/// let resources = harness_core::Resources::default();
/// resources.insert::<Arc<dyn StartGate>>(Arc::new(Alone));
/// assert!(resources.get::<Arc<dyn StartGate>>().is_some());
/// ```
#[async_trait]
pub trait StartGate: Send + Sync + fmt::Debug {
    /// Says this client is ready, waits until every client is, and returns when they all
    /// start (wall clock; it may have passed when this client was slow to learn it).
    ///
    /// # Errors
    /// When the other clients do not come, the gate cannot be reached, or `cancel` fires.
    async fn arrive(&self, cancel: &CancellationToken) -> Result<SystemTime>;
}

/// The wall-clock time `at` on tokio's clock, and how long ago it was (zero when it is
/// still to come): the epoch of load that starts at `at`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// let (epoch, late) = harness_core::start_instant(SystemTime::now() + Duration::from_secs(2));
/// assert_eq!(late, Duration::ZERO);
/// assert!(epoch > tokio::time::Instant::now() + Duration::from_secs(1));
/// let (_, late) = harness_core::start_instant(SystemTime::now() - Duration::from_secs(2));
/// assert!(late >= Duration::from_secs(2));
/// ```
pub fn start_instant(at: SystemTime) -> (tokio::time::Instant, Duration) {
    let (now, wall) = (tokio::time::Instant::now(), SystemTime::now());
    match at.duration_since(wall) {
        Ok(ahead) => (now.checked_add(ahead).unwrap_or(now), Duration::ZERO),
        Err(e) => {
            let late = e.duration();
            (now.checked_sub(late).unwrap_or(now), late)
        }
    }
}

/// How a backend tells that a workload is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Readiness {
    /// Ready as soon as it runs (a batch job, a tool).
    Running,
    /// Ready when its port accepts TCP connections.
    Tcp,
    /// Ready when `GET path` answers 2xx.
    Http {
        /// The health path, e.g. `/health`.
        path: String,
    },
}

impl Readiness {
    /// Probes `endpoint` once: `Ok(true)` when ready, `Ok(false)` when not yet.
    /// Only plain `http://` endpoints can be probed with [`Readiness::Http`].
    ///
    /// # Errors
    /// [`Error::NotSupported`] for an `https://` endpoint with [`Readiness::Http`].
    pub async fn probe(&self, endpoint: &Endpoint, timeout: Duration) -> Result<bool> {
        match self {
            Readiness::Running => Ok(true),
            Readiness::Tcp => {
                let addr = host_port(&endpoint.base_url)?;
                Ok(matches!(
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await,
                    Ok(Ok(_))
                ))
            }
            Readiness::Http { path } => {
                match tokio::time::timeout(timeout, http_get_status(&endpoint.url(path))).await {
                    Ok(Ok(status)) => Ok((200..300).contains(&status)),
                    Ok(Err(Error::NotSupported { what })) => Err(Error::NotSupported { what }),
                    _ => Ok(false),
                }
            }
        }
    }
}

fn host_port(url: &str) -> Result<String> {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else {
        return Err(Error::invalid(
            format!("URL `{url}`"),
            "expected http:// or https://",
        ));
    };
    let host = rest.split('/').next().unwrap_or_default();
    Ok(
        if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.ends_with(']'))
        {
            host.to_owned()
        } else {
            format!("{host}:{default_port}")
        },
    )
}

/// `GET url` over plain HTTP/1.1; returns the status code. For readiness checks on loopback
/// only: no TLS, no redirects, no body.
///
/// # Errors
/// [`Error::Transient`] when the connection fails or the answer is not HTTP;
/// [`Error::NotSupported`] for `https://`.
pub async fn http_get_status(url: &str) -> Result<u16> {
    if url.starts_with("https://") {
        return Err(Error::NotSupported {
            what: format!("an HTTPS readiness probe (`{url}`); use a TCP probe or plain HTTP"),
        });
    }
    let addr = host_port(url)?;
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    let host = rest.split('/').next().unwrap_or_default();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| Error::transient(format!("connecting to {addr}"), e))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: harness\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| Error::transient(format!("writing to {addr}"), e))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| Error::transient(format!("reading from {addr}"), e))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/"));
    status.ok_or_else(|| {
        Error::transient(
            format!("GET {url}"),
            format!(
                "the answer is not HTTP: {:?}",
                line.lines().next().unwrap_or_default()
            ),
        )
    })
}

/// What to launch: a process (local backend), a container image, or Kubernetes manifests
/// (Kubernetes backend). Backends refuse what they cannot run with [`Error::NotSupported`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkloadSpec {
    /// A name for logs and ids, e.g. `deployment` or `step-nvidia-smi`.
    pub name: String,
    /// The program and its arguments. `{port}` is replaced by the workload's port.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// The working directory.
    pub cwd: Option<PathBuf>,
    /// The port it serves on: `Some(0)` asks the backend for a free one; `None`, no port.
    pub port: Option<u16>,
    /// How readiness is told.
    pub readiness: Readiness,
    /// Labels that identify the run and cell (Kubernetes labels, process bookkeeping).
    pub labels: BTreeMap<String, String>,
    /// The container image, for backends that run containers; `command` is then the
    /// container's command (empty: the image's entrypoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Kubernetes manifests (one or more YAML documents) to apply instead of a process or
    /// image: a Dynamo `DynamoGraphDeployment`, a Deployment and its Service, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<String>,
}

impl WorkloadSpec {
    /// A process with no port that is ready once it runs.
    pub fn process<I, S>(name: impl Into<String>, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        WorkloadSpec {
            name: name.into(),
            command: command.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
            port: None,
            readiness: Readiness::Running,
            labels: BTreeMap::new(),
            image: None,
            manifests: None,
        }
    }

    /// Kubernetes manifests (YAML, one or more documents) to apply, named `name`.
    pub fn manifests(name: impl Into<String>, yaml: impl Into<String>) -> Self {
        let mut spec = Self::process(name, Vec::<String>::new());
        spec.manifests = Some(yaml.into());
        spec
    }

    /// Runs in a container of `image` (Kubernetes backend).
    #[must_use]
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Serves on `port` (0: a free port) and is ready when `readiness` says so.
    #[must_use]
    pub fn serving(mut self, port: u16, readiness: Readiness) -> Self {
        self.port = Some(port);
        self.readiness = readiness;
        self
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the working directory.
    #[must_use]
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// A handle to something a backend launched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Workload {
    /// The backend's id for it (a process group id, a Kubernetes name).
    pub id: String,
    /// The spec's name.
    pub name: String,
    /// Where it serves, if it serves.
    pub endpoint: Option<Endpoint>,
}

impl Workload {
    /// A handle; backends make these in `launch`.
    pub fn new(id: impl Into<String>, name: impl Into<String>, endpoint: Option<Endpoint>) -> Self {
        Workload {
            id: id.into(),
            name: name.into(),
            endpoint,
        }
    }
}

/// What a workload is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WorkloadStatus {
    /// Starting, not ready yet.
    Pending,
    /// Running and ready.
    Ready {
        /// Where it serves, if it serves.
        endpoint: Option<Endpoint>,
    },
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully, or can never become ready (crash loop, image pull error).
    Failed {
        /// Why, for people: exit code, signal, the last lines of its log.
        reason: String,
    },
}

impl fmt::Display for WorkloadStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadStatus::Pending => f.write_str("pending"),
            WorkloadStatus::Ready { .. } => f.write_str("ready"),
            WorkloadStatus::Succeeded => f.write_str("succeeded"),
            WorkloadStatus::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// Where work runs: local processes, Kubernetes, ...
///
/// # Contract
/// * `launch` submits the workload and returns without waiting for readiness.
/// * `status` never blocks for long: it reports what is known now. A workload that can never
///   become ready (it exited, it crash-loops) is [`WorkloadStatus::Failed`] with the reason.
/// * `logs` returns what the workload printed so far (stdout and stderr, interleaved); it
///   keeps working after the workload ended and until `teardown`.
/// * `teardown` stops the workload and everything it started, waits until it is gone, and is
///   idempotent: a second call, or a call for a workload that already ended, succeeds.
/// * A backend that is dropped tears down what it still owns, so that no work outlives it.
/// * Errors worth retrying are [`Error::Transient`]; an unknown workload is [`Error::NotFound`].
#[cfg_attr(any(test, feature = "testkit"), mockall::automock)]
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Submits `spec`.
    async fn launch(&self, spec: &WorkloadSpec) -> Result<Workload>;
    /// Reports the workload's status now.
    async fn status(&self, workload: &Workload) -> Result<WorkloadStatus>;
    /// What the workload printed so far.
    async fn logs(&self, workload: &Workload) -> Result<Bytes>;
    /// Stops the workload and all it started; idempotent.
    async fn teardown(&self, workload: &Workload) -> Result<()>;
    /// A short name for logs, e.g. `local`.
    fn name(&self) -> &str;
    /// What `workload` deployed, for the run's records (images, GPU requests, replicas, as
    /// the backend knows them); `Null` when it has nothing to add.
    async fn details(&self, _workload: &Workload) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }
}

/// Conveniences over any [`Backend`]; implemented for every backend, never by hand.
#[async_trait]
pub trait BackendExt: Backend {
    /// Polls until the workload is ready; fails fast when it fails, and on timeout or
    /// cancellation. A transient error reading the status (an API server answering 5xx or
    /// 429) is retried, up to [`TRANSIENT_RETRIES`] in a row.
    ///
    /// # Errors
    /// [`Error::Failed`] with the backend's reason; [`Error::Timeout`]; [`Error::Cancelled`].
    async fn wait_ready(
        &self,
        workload: &Workload,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<Endpoint>> {
        let start = Instant::now();
        let mut interval = Duration::from_millis(20);
        let mut errors = 0;
        loop {
            match status_retrying(self, workload, &mut errors).await? {
                Some(WorkloadStatus::Ready { endpoint }) => return Ok(endpoint),
                Some(WorkloadStatus::Failed { reason }) => {
                    return Err(Error::failed(
                        format!("workload `{}` did not become ready", workload.name),
                        reason,
                    ));
                }
                Some(WorkloadStatus::Succeeded) => {
                    return Err(Error::failed(
                        format!("workload `{}` did not become ready", workload.name),
                        "it exited (status 0) before it was ready",
                    ));
                }
                Some(WorkloadStatus::Pending) | None => {}
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: format!("waiting for `{}` to become ready", workload.name),
                    after: timeout,
                });
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(Error::Cancelled {
                    what: format!("waiting for `{}`", workload.name),
                }),
                () = tokio::time::sleep(interval) => {}
            }
            interval = (interval * 2).min(Duration::from_millis(500));
        }
    }

    /// Polls until the workload has finished; returns `Ok` when it succeeded. Transient
    /// errors reading the status are retried, as in [`BackendExt::wait_ready`].
    ///
    /// # Errors
    /// [`Error::Failed`] with the backend's reason; [`Error::Cancelled`].
    async fn wait_finished(&self, workload: &Workload, cancel: &CancellationToken) -> Result<()> {
        let mut interval = Duration::from_millis(10);
        let mut errors = 0;
        loop {
            match status_retrying(self, workload, &mut errors).await? {
                Some(WorkloadStatus::Succeeded) => return Ok(()),
                Some(WorkloadStatus::Failed { reason }) => {
                    return Err(Error::failed(format!("`{}`", workload.name), reason));
                }
                _ => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(Error::Cancelled {
                    what: format!("`{}`", workload.name),
                }),
                () = tokio::time::sleep(interval) => {}
            }
            interval = (interval * 2).min(Duration::from_millis(200));
        }
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}

/// Transient errors in a row that waiting for a workload absorbs.
pub const TRANSIENT_RETRIES: u32 = 10;

/// The workload's status; `None` after a transient error (counted in `errors`, which a
/// success resets), the error itself after [`TRANSIENT_RETRIES`] in a row or a lasting one.
async fn status_retrying<B: Backend + ?Sized>(
    backend: &B,
    workload: &Workload,
    errors: &mut u32,
) -> Result<Option<WorkloadStatus>> {
    match backend.status(workload).await {
        Ok(s) => {
            *errors = 0;
            Ok(Some(s))
        }
        Err(e) if e.is_transient() && *errors < TRANSIENT_RETRIES => {
            *errors += 1;
            tracing::warn!(workload = %workload.name, error = %e, attempt = *errors,
                "reading the status failed; retrying");
            tokio::time::sleep(Duration::from_millis(100 * u64::from(*errors))).await;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
