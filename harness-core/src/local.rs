//! [`LocalBackend`]: workloads are child processes of this one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::backend::{Backend, Endpoint, Readiness, Workload, WorkloadSpec, WorkloadStatus};
use crate::error::{Error, Result};

/// Runs workloads as child processes, each in its own process group.
///
/// * Readiness: by HTTP health path or TCP port on `127.0.0.1`, failing fast when the
///   process exits first.
/// * stdout and stderr go to one log file per workload, read back by [`Backend::logs`].
/// * [`Backend::teardown`] sends SIGTERM to the whole group, waits a grace period, then
///   SIGKILL; dropping the backend kills every group it still owns. A terminal's Ctrl-C
///   reaches harness only, never the children directly: harness decides when they stop.
/// * If the owning process dies without dropping the backend (`kill -9`), its workloads
///   outlive it; the next [`LocalBackend::new`] on the machine finds them through the
///   records kept in the backend's folder and kills them (process start times are checked,
///   so a reused pid is never hit).
///
/// ```no_run
/// use harness_core::{Backend, BackendExt, LocalBackend, Readiness, WorkloadSpec};
/// # async fn demo() -> harness_core::Result<()> {
/// let backend = LocalBackend::new()?;
/// let spec = WorkloadSpec::process("web", ["python3", "-m", "http.server", "{port}"])
///     .serving(0, Readiness::Http { path: "/".into() });
/// let w = backend.launch(&spec).await?;
/// let cancel = tokio_util::sync::CancellationToken::new();
/// let endpoint = backend.wait_ready(&w, std::time::Duration::from_secs(10), &cancel).await?;
/// println!("serving at {endpoint:?}");
/// backend.teardown(&w).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    procs: Mutex<HashMap<String, Proc>>,
    log_dir: PathBuf,
    owns_log_dir: bool,
    grace_ms: AtomicU64,
    probe_timeout: Duration,
    next: AtomicU64,
}

#[derive(Debug)]
struct Proc {
    child: tokio::process::Child,
    pgid: Pid,
    log_path: PathBuf,
    readiness: Readiness,
    endpoint: Option<Endpoint>,
    exit: Option<ExitStatus>,
}

impl LocalBackend {
    /// A backend that keeps logs in a new folder under the system's temp dir, removed when
    /// the backend is dropped, with a 5 s grace period between SIGTERM and SIGKILL.
    ///
    /// # Errors
    /// [`Error::Io`] when the log folder cannot be made.
    pub fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let root = std::env::temp_dir();
        let reaped = reap_orphans(&root);
        if reaped > 0 {
            tracing::warn!(
                reaped,
                "killed process groups left behind by a harness that died"
            );
        }
        let dir = root.join(format!("{STATE_PREFIX}{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let me = std::process::id() as i32;
        if let Some(start) = start_time(me) {
            let owner = dir.join(OWNER_FILE);
            std::fs::write(&owner, format!("{me} {start}\n"))
                .map_err(|e| Error::io(format!("writing {}", owner.display()), e))?;
        }
        Ok(Self::build(dir, true, Duration::from_secs(5)))
    }

    /// A backend that keeps logs in `dir` (made if missing, never removed).
    ///
    /// # Errors
    /// [`Error::Io`] when the folder cannot be made.
    pub fn with_log_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Self::build(dir, false, Duration::from_secs(5)))
    }

    fn build(log_dir: PathBuf, owns_log_dir: bool, grace: Duration) -> Self {
        LocalBackend {
            inner: Arc::new(Inner {
                procs: Mutex::new(HashMap::new()),
                log_dir,
                owns_log_dir,
                grace_ms: AtomicU64::new(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)),
                probe_timeout: Duration::from_secs(2),
                next: AtomicU64::new(0),
            }),
        }
    }

    /// Sets the time between SIGTERM and SIGKILL at teardown.
    #[must_use]
    pub fn with_grace_period(self, grace: Duration) -> Self {
        let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.inner.grace_ms.store(ms, Ordering::Relaxed);
        self
    }

    /// Kills every process group this backend still owns with SIGKILL, at once, without
    /// waiting. For a second Ctrl-C; teardown is the orderly way.
    pub fn kill_all_now(&self) {
        self.inner.kill_all();
    }

    /// How many workloads are still owned (launched and not torn down).
    pub fn live_workloads(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Proc>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill_all(&self) {
        for proc in self.lock().values() {
            // ESRCH (already gone) is fine.
            let _ = killpg(proc.pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.kill_all();
        if self.owns_log_dir {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// Folders of backends made by [`LocalBackend::new`] are named `<prefix><pid>-<nanos>`.
const STATE_PREFIX: &str = "harness-";
/// The owner record: `<pid> <start time>`.
const OWNER_FILE: &str = "owner";
/// A process group record: `<pgid> <start time of its leader>`.
const GROUP_SUFFIX: &str = ".pgid";

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22), which
/// together with the pid names one process for the machine's uptime.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is at index 19.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn read_record(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Kills the process groups recorded by backends whose owner process is gone, and removes
/// their folders. Returns how many groups were killed.
fn reap_orphans(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut reaped = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_state = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(STATE_PREFIX));
        let Some((owner, owner_start)) = is_state
            .then(|| read_record(&dir.join(OWNER_FILE)))
            .flatten()
        else {
            continue;
        };
        if start_time(owner) == Some(owner_start) {
            continue; // The owner is alive: not ours to touch.
        }
        for record in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = record.path();
            if !path.to_string_lossy().ends_with(GROUP_SUFFIX) {
                continue;
            }
            if let Some((pgid, start)) = read_record(&path)
                && start_time(pgid) == Some(start)
                && killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
            {
                reaped += 1;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    reaped
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.to_string());
            format!("killed by signal {name}")
        }
        _ => "ended".to_owned(),
    }
}

async fn log_tail(path: &Path, lines: usize) -> String {
    let data = tokio::fs::read(path).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&data);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn free_port() -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::io("finding a free port on 127.0.0.1", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free port on 127.0.0.1", e))
}

#[async_trait]
impl Backend for LocalBackend {
    async fn launch(&self, spec: &WorkloadSpec) -> Result<Workload> {
        if spec.manifests.is_some() || spec.image.is_some() {
            return Err(Error::NotSupported {
                what: format!(
                    "`{}`: Kubernetes manifests and container images on the local backend",
                    spec.name
                ),
            });
        }
        let Some(program) = spec.command.first() else {
            return Err(Error::invalid(
                format!("workload `{}`", spec.name),
                "the command is empty",
            ));
        };
        let port = match spec.port {
            Some(0) => Some(free_port().await?),
            other => other,
        };
        let fill = |s: &str| match port {
            Some(p) => s.replace("{port}", &p.to_string()),
            None => s.to_owned(),
        };
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let safe = path_safe(&spec.name);
        let log_path = self.inner.log_dir.join(format!("{safe}-{n}.log"));
        let log = tokio::fs::File::create(&log_path)
            .await
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?
            .into_std()
            .await;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;

        let mut cmd = tokio::process::Command::new(fill(program));
        cmd.args(spec.command[1..].iter().map(|a| fill(a)))
            .envs(spec.env.iter().map(|(k, v)| (k, fill(v))))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(true);
        if let Some(port) = port {
            cmd.env("PORT", port.to_string());
        }
        if let Some(dir) = &spec.cwd {
            cmd.current_dir(dir);
        }
        let child = cmd.spawn().map_err(|e| Error::Failed {
            context: format!("starting workload `{}`", spec.name),
            reason: format!("cannot run `{program}`: {e}"),
            source: Some(Box::new(e)),
        })?;
        let pid = child.id().ok_or_else(|| {
            Error::failed(
                format!("starting workload `{}`", spec.name),
                "it exited at once",
            )
        })?;
        let pid = i32::try_from(pid)
            .map_err(|_| Error::failed("starting a workload", "process id out of range"))?;
        let endpoint = match port {
            Some(p) => Some(Endpoint::new(format!("http://127.0.0.1:{p}"))?),
            None => None,
        };
        let id = format!("local-{pid}");
        if self.inner.owns_log_dir
            && let Some(start) = start_time(pid)
        {
            let record = self.inner.log_dir.join(format!("{pid}{GROUP_SUFFIX}"));
            if let Err(e) = tokio::fs::write(&record, format!("{pid} {start}\n")).await {
                tracing::warn!(error = %e, "cannot record the process group; it may outlive a killed harness");
            }
        }
        tracing::debug!(workload = %spec.name, %id, ?port, "launched");
        self.inner.lock().insert(
            id.clone(),
            Proc {
                child,
                pgid: Pid::from_raw(pid),
                log_path,
                readiness: spec.readiness.clone(),
                endpoint: endpoint.clone(),
                exit: None,
            },
        );
        Ok(Workload::new(id, spec.name.clone(), endpoint))
    }

    async fn status(&self, workload: &Workload) -> Result<WorkloadStatus> {
        let (exit, readiness, endpoint, log_path) = {
            let mut procs = self.inner.lock();
            let proc = procs.get_mut(&workload.id).ok_or_else(|| Error::NotFound {
                what: format!("workload `{}` ({})", workload.name, workload.id),
            })?;
            if proc.exit.is_none() {
                proc.exit = proc
                    .child
                    .try_wait()
                    .map_err(|e| Error::io(format!("checking `{}`", workload.name), e))?;
            }
            (
                proc.exit,
                proc.readiness.clone(),
                proc.endpoint.clone(),
                proc.log_path.clone(),
            )
        };
        if let Some(status) = exit {
            if status.success() {
                return Ok(WorkloadStatus::Succeeded);
            }
            let tail = log_tail(&log_path, 20).await;
            let reason = if tail.is_empty() {
                describe_exit(status)
            } else {
                format!("{}; last output:\n{tail}", describe_exit(status))
            };
            return Ok(WorkloadStatus::Failed { reason });
        }
        let ready = match (&readiness, &endpoint) {
            (Readiness::Running, _) => true,
            (_, Some(ep)) => readiness.probe(ep, self.inner.probe_timeout).await?,
            (_, None) => {
                return Err(Error::invalid(
                    format!("workload `{}`", workload.name),
                    "a TCP or HTTP readiness check needs a port",
                ));
            }
        };
        Ok(if ready {
            WorkloadStatus::Ready { endpoint }
        } else {
            WorkloadStatus::Pending
        })
    }

    async fn logs(&self, workload: &Workload) -> Result<Bytes> {
        let path = {
            let procs = self.inner.lock();
            procs
                .get(&workload.id)
                .map(|p| p.log_path.clone())
                .ok_or_else(|| Error::NotFound {
                    what: format!("workload `{}` ({})", workload.name, workload.id),
                })?
        };
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))
    }

    async fn teardown(&self, workload: &Workload) -> Result<()> {
        let Some(mut proc) = self.inner.lock().remove(&workload.id) else {
            return Ok(());
        };
        if proc.exit.is_none() {
            let _ = killpg(proc.pgid, Signal::SIGTERM);
            if tokio::time::timeout(
                Duration::from_millis(self.inner.grace_ms.load(Ordering::Relaxed)),
                proc.child.wait(),
            )
            .await
            .is_err()
            {
                tracing::warn!(workload = %workload.name, "did not stop within the grace period; killing");
            }
        }
        // The leader may be gone while others in its group live on: kill the group anyway.
        let _ = killpg(proc.pgid, Signal::SIGKILL);
        let _ = proc.child.wait().await;
        let _ = tokio::fs::remove_file(&proc.log_path).await;
        let _ = tokio::fs::remove_file(
            self.inner
                .log_dir
                .join(format!("{}{GROUP_SUFFIX}", proc.pgid.as_raw())),
        )
        .await;
        tracing::debug!(workload = %workload.name, "torn down");
        Ok(())
    }

    fn name(&self) -> &str {
        "local"
    }
}

/// `s` with every character but ASCII letters, digits and `-` replaced by `_`, for file
/// names.
pub(crate) fn path_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
