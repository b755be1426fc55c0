//! Test support (feature `testkit`): a real S3-compatible server on loopback ([`MotoServer`],
//! moto installed by `scripts/test-deps.sh`) and a TCP proxy that can refuse connections
//! ([`TcpProxy`]) to stage an outage without losing the server's in-memory objects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::AbortHandle;

/// Where `scripts/test-deps.sh` puts moto's `moto_server`: `$HARNESS_TEST_DEPS/moto/bin`
/// (default `~/.cache/harness-test-deps`), or `$HARNESS_MOTO_SERVER`.
pub fn moto_server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HARNESS_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let deps = std::env::var_os("HARNESS_TEST_DEPS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/harness-test-deps")
        },
        PathBuf::from,
    );
    deps.join("moto/bin/moto_server")
}

/// A moto S3 server on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
}

impl MotoServer {
    /// Starts moto on a free port and waits until it answers.
    ///
    /// # Panics
    /// When moto is not installed (run `scripts/test-deps.sh`) or does not start in 30 s.
    pub async fn start() -> MotoServer {
        Self::start_with_env(&[]).await
    }

    /// Starts moto checking every request's credentials, as S3 does: requests signed with
    /// keys it does not know get `403 InvalidAccessKeyId`.
    ///
    /// # Panics
    /// As [`MotoServer::start`].
    pub async fn start_with_auth() -> MotoServer {
        Self::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]).await
    }

    async fn start_with_env(env: &[(&str, &str)]) -> MotoServer {
        let bin = moto_server_path();
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test-deps.sh to install moto",
            bin.display()
        );
        let port = free_port().await;
        let child = Command::new(&bin)
            .envs(env.iter().copied())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = MotoServer { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http(addr, "GET", "/").await.is_ok() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "moto did not answer on {addr} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates a bucket.
    ///
    /// # Panics
    /// When moto refuses.
    pub async fn create_bucket(&self, bucket: &str) {
        let status = http(self.addr, "PUT", &format!("/{bucket}"))
            .await
            .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
        assert_eq!(status, 200, "creating bucket {bucket}");
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Store options for an S3 store served at `addr` (path-style, plain HTTP, few retries).
pub fn s3_options(addr: SocketAddr) -> BTreeMap<String, String> {
    [
        ("endpoint", format!("http://{addr}")),
        ("allow_http", "true".into()),
        ("region", "us-east-1".into()),
        ("access_key_id", "testing".into()),
        ("secret_access_key", "testing-secret".into()),
        ("retries", "1".into()),
        ("retry_timeout", "2s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a free port");
    l.local_addr().expect("local addr").port()
}

/// One HTTP/1.1 request without a body; returns the status code.
async fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:.80}")))
}

/// A TCP proxy on 127.0.0.1 in front of `upstream`. [`TcpProxy::cut`] closes its port and
/// every open connection (clients see connection refused, as when the server is down);
/// [`TcpProxy::restore`] opens the same port again. [`TcpProxy::freeze`] stages a hung
/// server instead: connections are accepted and never answered, until [`TcpProxy::thaw`].
#[derive(Debug, Clone)]
pub struct TcpProxy {
    inner: Arc<ProxyInner>,
}

#[derive(Debug)]
struct ProxyInner {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Mutex<Vec<AbortHandle>>,
    frozen: std::sync::atomic::AtomicBool,
    /// Connections accepted while frozen.
    held: std::sync::atomic::AtomicUsize,
    /// The accept loop, among `tasks`.
    accept: Mutex<Option<AbortHandle>>,
}

impl TcpProxy {
    /// Starts forwarding.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let port = free_port().await;
        let proxy = TcpProxy {
            inner: Arc::new(ProxyInner {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                upstream,
                tasks: Mutex::new(Vec::new()),
                frozen: std::sync::atomic::AtomicBool::new(false),
                held: std::sync::atomic::AtomicUsize::new(0),
                accept: Mutex::new(None),
            }),
        };
        proxy.restore().await;
        proxy
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops accepting and drops every connection.
    pub fn cut(&self) {
        for t in self.tasks().drain(..) {
            t.abort();
        }
    }

    /// Drops every open connection, then accepts new ones and never answers them: a server
    /// that hangs.
    pub fn freeze(&self) {
        self.inner
            .frozen
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.drop_connections();
    }

    /// Ends a [`TcpProxy::freeze`]: the connections held are dropped, new ones are forwarded.
    pub fn thaw(&self) {
        self.inner
            .frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.drop_connections();
    }

    /// How many connections were accepted while frozen.
    pub fn held(&self) -> usize {
        self.inner.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn drop_connections(&self) {
        let accept = self
            .inner
            .accept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.tasks().retain(|t| {
            let keep = accept.as_ref().is_some_and(|a| a.id() == t.id());
            if !keep {
                t.abort();
            }
            keep
        });
    }

    /// Accepts again, on the same port.
    ///
    /// # Panics
    /// When the port cannot be bound again.
    pub async fn restore(&self) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = socket.bind(self.inner.addr) {
            assert!(
                Instant::now() < deadline,
                "rebinding {}: {e}",
                self.inner.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listener = socket.listen(1024).expect("listen");
        let me = self.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = me.inner.upstream;
                let frozen = me.inner.frozen.load(std::sync::atomic::Ordering::SeqCst);
                if frozen {
                    me.inner
                        .held
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let conn = tokio::spawn(async move {
                    if frozen {
                        // Read and never answer, like a hung server.
                        let mut sink = [0u8; 4096];
                        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
                        std::future::pending::<()>().await;
                    }
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut tasks = me.tasks();
                tasks.retain(|t| !t.is_finished());
                tasks.push(conn.abort_handle());
            }
        });
        *self.inner.accept.lock().unwrap_or_else(|e| e.into_inner()) = Some(accept.abort_handle());
        self.tasks().push(accept.abort_handle());
    }
}
