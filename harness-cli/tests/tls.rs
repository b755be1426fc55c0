//! A sweep against an `https` endpoint: a TLS terminator (rustls, a certificate made by the
//! `openssl` command for 127.0.0.1) in front of the mock, trusted through `SSL_CERT_FILE`.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{harness_with_env, text};
use harness_core::config::MockDeployment;
use harness_llm::mock::MockServer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A self-signed certificate for 127.0.0.1 and its key, as `dir/cert.pem` and `dir/key.pem`.
fn certificate(dir: &Path) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=harness test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // Its own trust anchor, but not a CA: a server must not present a CA certificate.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .output()
        .expect("openssl runs (scripts/test-deps.sh installs it)");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Serves TLS on a loopback port, passing each connection's bytes to and from the mock.
/// Returns the port; the server lives as long as the test's runtime.
async fn tls_in_front_of(mock: std::net::SocketAddr, dir: &Path) -> u16 {
    let certs = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .expect("cert.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).expect("key.pem");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(mock).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_against_an_https_endpoint_streams_through_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    certificate(dir.path());
    let mut cfg = MockDeployment::default();
    cfg.ttft_ms = 5.0;
    cfg.itl_ms = 2.0;
    let mock = MockServer::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("mock");
    let port = tls_in_front_of(mock.addr(), dir.path()).await;
    let exp = dir.path().join("tls.yaml");
    std::fs::write(
        &exp,
        format!(
            "name: tls\nmodel: {{name: harness-mock}}\nconcurrency: [2]\n\
             benchmark: {{isl_osl: [[32, 8]]}}\n\
             deployment: {{url: https://127.0.0.1:{port}}}\nload: {{requests: 8}}\n"
        ),
    )
    .expect("experiment");
    let cert = dir.path().join("cert.pem");
    let run_dir = dir.path().to_owned();
    let (out, untrusted) = tokio::task::spawn_blocking(move || {
        let args = ["run", exp.to_str().expect("path")];
        let trusted = harness_with_env(&run_dir, &args, &[("SSL_CERT_FILE", cert.as_os_str())]);
        // With other roots (an empty file: the system's), the certificate is not trusted.
        std::fs::write(run_dir.join("none.pem"), "").expect("empty roots");
        let untrusted = harness_with_env(
            &run_dir,
            &args,
            &[("SSL_CERT_FILE", run_dir.join("none.pem").as_os_str())],
        );
        (trusted, untrusted)
    })
    .await
    .expect("harness");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1/1 cells succeeded"), "{stdout}");
    // "... stored at file:///<dir>/harness-runs/runs/tls/<run id>"
    let run = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("file://"))
        .expect("where the run is stored");
    let stats = Path::new(run).join("cells/concurrency=2,isl=32,osl=8/stats.json");
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stats).expect("stats")).expect("json");
    assert_eq!(stats["requests"], 8, "{stats}");
    assert_eq!(stats["succeeded"], 8, "{stats}");
    let ttft = stats["distributions"]["ttft"]["percentiles"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p[0] == 50)
        .and_then(|p| p[1].as_f64())
        .expect("ttft p50");
    assert!((5.0..500.0).contains(&ttft), "ttft p50 {ttft}");
    let says = text(&untrusted.stderr);
    assert!(!untrusted.status.success(), "{says}");
    assert!(says.contains("invalid peer certificate"), "{says}");
}
