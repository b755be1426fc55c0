//! Helpers shared by the CLI's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `harness args...` in `dir` and waits for it.
pub(crate) fn harness(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .env_remove("HARNESS_LOG")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("harness runs")
}

/// Bytes as text.
pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The repository's root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where `scripts/test-deps.sh` installs what the tests need.
pub(crate) fn deps() -> PathBuf {
    std::env::var_os("HARNESS_TEST_DEPS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/harness-test-deps")
        },
        PathBuf::from,
    )
}

/// Runs `harness args...` in `dir` with extra environment variables, and waits for it.
pub(crate) fn harness_with_env(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .env_remove("HARNESS_LOG")
        .envs(env.iter().copied())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("harness runs")
}

/// The body of `GET path` from a server on `127.0.0.1:port` (HTTP/1.1, no chunking).
pub(crate) fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}
