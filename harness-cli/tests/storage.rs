//! Runs in object storage, end to end through the `harness` binary: the catalog commands
//! (`ls`, `show`, `reproduce`, `push`), a real S3-compatible server (moto on loopback), an
//! outage of that server in the middle of a run, and secrets kept out of every stored object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness_core::{ArtifactKey, ArtifactStore, ArtifactStoreExt};
use harness_storage::StoreOptions;
use harness_storage::testkit::{MotoServer, TcpProxy, s3_options};

async fn harness(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.env_remove("HARNESS_LOG").current_dir(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("harness runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    stdout
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("json output")
}

/// A small experiment against the mock.
fn experiment(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let body = format!(
        "name: {name}\nmodel: {{name: m}}\nconcurrency: [1, 2]\nbenchmark:\n  isl_osl: [[16, 8]]\n\
         deployment:\n  mock: {{ttft_ms: 2, itl_ms: 1}}\nload:\n  requests: 8\n  preflight: false\n{extra}"
    );
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, body).expect("write");
    p
}

/// `--store-opt` flags for moto at `addr`.
fn store_opts(addr: std::net::SocketAddr) -> Vec<String> {
    s3_options(addr)
        .into_iter()
        .flat_map(|(k, v)| ["--store-opt".to_owned(), format!("{k}={v}")])
        .collect()
}

fn s3(url: &str, addr: std::net::SocketAddr) -> Arc<dyn ArtifactStore> {
    let opts = StoreOptions::from_map(url, &s3_options(addr)).expect("options");
    harness_storage::open_with(url, &opts).expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_show_reproduce_and_push_to_s3_read_back_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // A run made by the quickstart, made smaller.
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/quickstart.yaml");
    ok(&harness(
        d,
        &[
            "run",
            quickstart.to_str().expect("path"),
            "--no-progress",
            "--set",
            "concurrency=[1,2]",
            "--set",
            "benchmark.isl_osl=[[16,8]]",
            "--set",
            "load.requests=8",
        ],
        &[],
    )
    .await);

    let runs = json(&harness(d, &["ls", "--json"], &[]).await);
    let runs = runs.as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let id = runs[0]["run_id"].as_str().expect("id").to_owned();
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(
        (runs[0]["succeeded"].as_u64(), runs[0]["cells"].as_u64()),
        (Some(2), Some(2))
    );
    let table = ok(&harness(d, &["ls"], &[]).await);
    assert!(table.contains(&id) && table.contains("2/0/2"), "{table}");

    let shown = ok(&harness(d, &["show", &id], &[]).await);
    assert!(shown.contains(&format!("run         {id}")), "{shown}");
    assert!(shown.contains("host") && shown.contains("CPUs"), "{shown}");
    for cell in ["concurrency=1,isl=16,osl=8", "concurrency=2,isl=16,osl=8"] {
        assert!(
            shown
                .lines()
                .any(|l| l.contains(cell) && l.contains(" ok ")),
            "{shown}"
        );
    }
    let local = json(&harness(d, &["show", &id, "--json"], &[]).await);
    let m = &local["manifest"];
    assert_eq!(m["cell_status"]["concurrency=2,isl=16,osl=8"], "succeeded");
    assert!(m["host"]["cpus"].as_u64().is_some_and(|c| c >= 1));
    assert!(m["finished_at"].is_string());
    // The quickstart lives in this repository: its commit is recorded.
    let commit = m["provenance"]["git"]["commit"]
        .as_str()
        .unwrap_or_default();
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{m}"
    );
    assert!(m["provenance"]["git"]["dirty"].is_boolean(), "{m}");
    assert_eq!(local["cells"].as_array().map(Vec::len), Some(2));

    // Reproduce: a new run of the stored experiment that says what it reproduces.
    ok(&harness(d, &["reproduce", &id, "--no-progress"], &[]).await);
    let runs = json(&harness(d, &["ls", "--json"], &[]).await);
    let runs = runs.as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    let copy = runs
        .iter()
        .find(|r| r["run_id"] != id.as_str())
        .expect("new run");
    assert_eq!(copy["reproduces"], format!("quickstart/{id}"));
    assert_eq!(copy["status"], "succeeded");
    let copy_id = copy["run_id"].as_str().expect("id");
    let again = json(&harness(d, &["show", copy_id, "--json"], &[]).await);
    assert_eq!(
        again["manifest"]["experiment"],
        local["manifest"]["experiment"]
    );
    let input = |run: &str| {
        std::fs::read_to_string(d.join(format!(
            "harness-runs/runs/quickstart/{run}/experiment.yaml"
        )))
        .expect("experiment.yaml")
    };
    assert_eq!(input(copy_id), input(&id));

    // Push to S3 and read it back with `show --store s3://...`: identical.
    let moto = MotoServer::start().await;
    moto.create_bucket("team").await;
    let url = "s3://team/bench";
    let mut args = vec!["push".to_owned(), id.clone(), "--to".into(), url.into()];
    for kv in s3_options(moto.addr()) {
        args.extend(["--to-opt".to_owned(), format!("{}={}", kv.0, kv.1)]);
    }
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let pushed = ok(&harness(d, &args_ref, &[]).await);
    assert!(
        pushed.contains("verified") && !pushed.contains(" 0 objects copied"),
        "{pushed}"
    );
    let pushed_again = ok(&harness(d, &args_ref, &[]).await);
    assert!(pushed_again.contains(" 0 objects copied"), "{pushed_again}");

    let mut show_s3 = vec![
        "show".to_owned(),
        id.clone(),
        "--json".into(),
        "--store".into(),
        url.into(),
    ];
    show_s3.extend(store_opts(moto.addr()));
    let show_ref: Vec<&str> = show_s3.iter().map(String::as_str).collect();
    let remote = json(&harness(d, &show_ref, &[]).await);
    assert_eq!(
        remote, local,
        "the run read back from S3 equals the local one"
    );
    let mut ls_s3 = vec![
        "ls".to_owned(),
        "--json".into(),
        "--store".into(),
        url.into(),
    ];
    ls_s3.extend(store_opts(moto.addr()));
    let ls_ref: Vec<&str> = ls_s3.iter().map(String::as_str).collect();
    assert_eq!(
        json(&harness(d, &ls_ref, &[]).await)
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Bad input: an unknown run, a bad store option.
    let missing = harness(d, &["show", "no-such-run"], &[]).await;
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("no-such-run"),
        "{}",
        text(&missing.stderr)
    );
    let bad = harness(d, &["ls", "--store", url, "--store-opt", "nonsense"], &[]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("KEY=VALUE"),
        "{}",
        text(&bad.stderr)
    );
}

/// How many files there are under `dir` (0 when it does not exist).
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { files_under(&p) } else { 1 }
        })
        .sum()
}

/// `harness run EXP --store URL` against the S3 server at `addr`, in the background.
fn run_in_background(
    dir: &Path,
    exp: &Path,
    url: &str,
    addr: std::net::SocketAddr,
) -> tokio::task::JoinHandle<Output> {
    let mut args = vec![
        "run".to_owned(),
        exp.display().to_string(),
        "--no-progress".into(),
        "--store".into(),
        url.to_owned(),
    ];
    args.extend(store_opts(addr));
    let dir = dir.to_owned();
    tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        harness(&dir, &args, &[]).await
    })
}

/// Every object under `prefix` of `store`, with its bytes.
async fn everything(store: &dyn ArtifactStore) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for m in store
        .list(&ArtifactKey::new("runs").expect("key"))
        .await
        .expect("list")
    {
        let data = store.get(&m.key).await.expect("get");
        out.insert(m.key.to_string(), data.to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_the_environment_and_the_experiment_reach_no_stored_object() {
    let moto = MotoServer::start().await;
    moto.create_bucket("sec").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let env_secret = "aws-secret-from-env-7f3a9c";
    let api_key = "sk-api-key-from-env-51bd20";
    let header_token = "header-token-in-yaml-c0ffee";
    let option_secret = "access-key-in-yaml-9d8e7f";
    let extra = format!(
        "  api_key_env: BENCH_API_KEY\n  headers:\n    Authorization: Bearer {header_token}\n\
         storage:\n  options:\n    access_key_id: {option_secret}\n"
    );
    let exp = experiment(d, "sec", &extra);
    let env = [
        ("AWS_SECRET_ACCESS_KEY", env_secret),
        ("BENCH_API_KEY", api_key),
    ];
    // The endpoint comes from the command line; the credentials from the environment and
    // the experiment (moto takes any).
    let addr = moto.addr();
    let endpoint = format!("endpoint=http://{addr}");
    let args = [
        "run",
        exp.to_str().expect("path"),
        "--no-progress",
        "--store",
        "s3://sec/runs",
        "--store-opt",
        &endpoint,
        "--store-opt",
        "allow_http=true",
        "--store-opt",
        "region=us-east-1",
    ];
    let out = harness(d, &args, &env).await;
    let logs = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{logs}");
    // A local run of the same experiment too.
    let local = harness(
        d,
        &["run", exp.to_str().expect("path"), "--no-progress"],
        &env,
    )
    .await;
    let local_logs = format!("{}{}", text(&local.stdout), text(&local.stderr));
    assert!(local.status.success(), "{local_logs}");

    let mut objects = everything(s3("s3://sec/runs", addr).as_ref()).await;
    let local_store =
        harness_storage::open(&d.join("harness-runs").display().to_string()).expect("open");
    let local_objects = everything(local_store.as_ref()).await;
    assert!(objects.len() > 10 && local_objects.len() > 10);
    objects.extend(
        local_objects
            .into_iter()
            .map(|(k, v)| (format!("local:{k}"), v)),
    );
    for secret in [env_secret, api_key, header_token, option_secret] {
        for (key, data) in &objects {
            assert!(
                memchr_find(data, secret.as_bytes()).is_none(),
                "secret `{secret}` found in {key}"
            );
        }
        assert!(
            !logs.contains(secret) && !local_logs.contains(secret),
            "secret in the output"
        );
    }
    // They were there to redact: the stored input shows where.
    let input = objects
        .iter()
        .find(|(k, _)| k.starts_with("runs/") && k.ends_with("/experiment.yaml"))
        .map(|(_, v)| text(v))
        .expect("experiment.yaml");
    assert!(input.contains("Authorization: <redacted>"), "{input}");
    assert!(input.contains("access_key_id: <redacted>"), "{input}");
    // A redacted file still parses.
    harness_core::Experiment::from_yaml_str(&input, "stored experiment.yaml").expect("parses");
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_mid_run_spools_results_and_uploads_every_cell_once() {
    let moto = MotoServer::start().await;
    moto.create_bucket("out").await;
    let proxy = TcpProxy::start(moto.addr()).await;
    let direct = s3("s3://out", moto.addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_owned();
    let spool = d.join("spool");
    // Six cells of about a second each.
    let extra = format!("storage:\n  spool: {}\n", spool.display());
    let body = std::fs::read_to_string(experiment(&d, "outage", &extra)).expect("read");
    let body = body
        .replace("concurrency: [1, 2]", "concurrency: [1, 2, 3, 4, 5, 6]")
        .replace("itl_ms: 1", "itl_ms: 8")
        .replace("requests: 8", "requests: 32");
    let exp = d.join("outage.yaml");
    std::fs::write(&exp, body).expect("write");

    let run = run_in_background(&d, &exp, "s3://out", proxy.addr());

    // Cut the server off once the first cell is stored, and bring it back 1.5 s later, while
    // the remaining cells (about 3 s) still run.
    let first = ArtifactKey::new("runs/outage").expect("key");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = direct.list(&first).await.expect("list");
        if listed.iter().any(|m| {
            m.key
                .as_str()
                .ends_with("concurrency=1,isl=16,osl=8/summary.json")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "the first cell never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Cells finished during the outage are in the spool, not in the bucket.
    let spooled = harness_storage::open(&spool.display().to_string())
        .expect("spool")
        .list(&ArtifactKey::new("s3___out").expect("key"))
        .await
        .expect("list spool");
    proxy.restore().await;
    let out = run.await.expect("join");
    let stdout = ok(&out);
    assert!(!spooled.is_empty(), "nothing was spooled during the outage");
    assert!(stdout.contains("6/6 cells succeeded"), "{stdout}");
    assert!(
        stdout.contains("objects") && stdout.contains("from the spool"),
        "{stdout}"
    );

    // Every cell's results are in the bucket, each object once, and the spool is empty.
    let objects = everything(direct.as_ref()).await;
    let run_root = objects
        .keys()
        .find_map(|k| k.strip_suffix("/manifest.json"))
        .expect("manifest")
        .to_owned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&objects[&format!("{run_root}/manifest.json")]).expect("manifest");
    assert_eq!(manifest["status"], "succeeded");
    for c in 1..=6 {
        let cell = format!("concurrency={c},isl=16,osl=8");
        let journal: serde_json::Value =
            serde_json::from_slice(&objects[&format!("{run_root}/journal/{cell}.json")])
                .expect("journal");
        assert_eq!(journal["status"], "succeeded", "{cell}");
        let records = &objects[&format!("{run_root}/cells/{cell}/records.parquet")];
        let batch = harness_analytics::io::from_parquet(records.clone().into()).expect("parquet");
        assert_eq!(batch.num_rows(), 32, "{cell}");
        assert!(
            objects.contains_key(&format!("{run_root}/cells/{cell}/summary.json")),
            "{cell}"
        );
    }
    let left = harness_storage::open(&spool.display().to_string())
        .expect("spool")
        .list(&ArtifactKey::new("s3___out/runs").expect("key"))
        .await
        .expect("list");
    assert!(left.is_empty(), "the spool still holds {left:?}");
    let summary: Vec<serde_json::Value> = direct
        .get_json(&ArtifactKey::new(format!("{run_root}/summary.json")).expect("key"))
        .await
        .expect("summary");
    assert_eq!(summary.len(), 6);
}

/// The usual MinIO set-up: everything about the store in the environment, only the URL in
/// the experiment.
fn s3_env(addr: std::net::SocketAddr, allow_http: bool) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret".to_owned()),
        ("AWS_ENDPOINT", format!("http://{addr}")),
        ("AWS_REGION", "us-east-1".to_owned()),
    ];
    if allow_http {
        env.push(("AWS_ALLOW_HTTP", "true".to_owned()));
    }
    env
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_settings_from_the_environment_alone_reach_s3() {
    let moto = MotoServer::start().await;
    moto.create_bucket("envb").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let spool = d.join("spool");
    let extra = format!(
        "storage:\n  url: s3://envb/team\n  spool: {}\n",
        spool.display()
    );
    let exp = experiment(d, "env", &extra);
    let env = s3_env(moto.addr(), true);
    let out = harness(
        d,
        &["run", exp.to_str().expect("path"), "--no-progress"],
        &env_refs(&env),
    )
    .await;
    let stdout = ok(&out);
    assert!(stdout.contains("2/2 cells succeeded"), "{stdout}");
    assert!(!stdout.contains("spool"), "{stdout}");
    // Everything is in the bucket, nothing in the spool.
    let objects = everything(s3("s3://envb/team", moto.addr()).as_ref()).await;
    assert!(
        objects.keys().any(|k| k.ends_with("/manifest.json")),
        "{:?}",
        objects.keys()
    );
    assert!(objects.len() > 10, "{:?}", objects.keys());
    let spooled = harness_storage::open(&spool.display().to_string())
        .expect("spool")
        .list(&ArtifactKey::new("s3___envb_team").expect("key"))
        .await
        .expect("list");
    assert!(spooled.is_empty(), "{spooled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_store_stops_the_run_before_anything_runs() {
    let moto = MotoServer::start().await;
    moto.create_bucket("conf").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let spool = d.join("spool");
    let cases = [
        // Plain HTTP without AWS_ALLOW_HTTP: refused by the client.
        ("s3://conf/team", false, "allowed"),
        // A bucket that does not exist.
        ("s3://no-such-bucket/team", true, "not found"),
    ];
    for (url, allow_http, cause) in cases {
        let extra = format!("storage:\n  url: {url}\n  spool: {}\n", spool.display());
        let exp = experiment(d, "conf", &extra);
        let env = s3_env(moto.addr(), allow_http);
        let out = harness(
            d,
            &["run", exp.to_str().expect("path"), "--no-progress"],
            &env_refs(&env),
        )
        .await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{url}: {stdout}\n{stderr}");
        assert!(
            stderr.contains(url) && stderr.contains("cannot be used"),
            "{url}: {stderr}"
        );
        assert!(
            stderr.to_lowercase().contains(cause),
            "{url}: the cause `{cause}` is not named: {stderr}"
        );
        // No cell ran, nothing was spooled.
        assert!(!stdout.contains("cells succeeded"), "{stdout}");
        assert_eq!(files_under(&spool), 0, "something was spooled");
    }
    assert!(
        everything(s3("s3://conf", moto.addr()).as_ref())
            .await
            .is_empty(),
        "the probe object was left behind or a run was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_the_credentials_stops_the_run_with_exit_2() {
    // moto checking signatures: the keys below are unknown to it, so every request is 403.
    let moto = MotoServer::start_with_auth().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let extra = format!(
        "storage:\n  url: s3://locked/team\n  spool: {}\n",
        d.join("spool").display()
    );
    let exp = experiment(d, "locked", &extra);
    let env = s3_env(moto.addr(), true);
    let out = harness(
        d,
        &["run", exp.to_str().expect("path"), "--no-progress"],
        &env_refs(&env),
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("s3://locked/team") && stderr.contains("cannot be used"),
        "{stderr}"
    );
    assert!(
        stderr.contains("403") || stderr.to_lowercase().contains("denied"),
        "the refusal is named: {stderr}"
    );
    assert!(!stdout.contains("cells succeeded"), "{stdout}");
    assert_eq!(files_under(&d.join("spool")), 0, "something was spooled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_hangs_mid_run_leaves_results_in_the_spool_with_exit_3() {
    let moto = MotoServer::start().await;
    moto.create_bucket("hang").await;
    let proxy = TcpProxy::start(moto.addr()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_owned();
    let spool = d.join("harness-spool");
    let body = std::fs::read_to_string(experiment(&d, "hang", "")).expect("read");
    let body = body.replace("concurrency: [1, 2]", "concurrency: [1, 2, 3, 4]");
    let exp = d.join("hang.yaml");
    std::fs::write(&exp, body).expect("write");
    let run = run_in_background(&d, &exp, "s3://hang", proxy.addr());
    // Hang the server once the first cell is stored, until the run has ended.
    let direct = s3("s3://hang", moto.addr());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = direct
            .list(&ArtifactKey::new("runs/hang").expect("key"))
            .await
            .expect("list");
        if listed
            .iter()
            .any(|m| m.key.as_str().ends_with("/summary.json"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the first cell never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.freeze();
    let out = run.await.expect("join");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("4/4 cells succeeded"), "{stdout}");
    assert!(
        stdout.contains("wait in the spool") && stdout.contains("harness push"),
        "{stdout}"
    );
    // The writes after the hang were not each sent to the hung server: the write that found
    // it down, the background probes and the final flush, not one per object.
    assert!(
        proxy.held() < 12,
        "{} connections to the hung server",
        proxy.held()
    );

    // `harness ls` says which run waits in the spool, even while the store hangs.
    let mut ls = vec![
        "ls".to_owned(),
        "--json".into(),
        "--store".into(),
        "s3://hang".into(),
    ];
    ls.extend(store_opts(proxy.addr()));
    let ls_ref: Vec<&str> = ls.iter().map(String::as_str).collect();
    let runs = json(&harness(&d, &ls_ref, &[]).await);
    let runs = runs.as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        runs[0]["spooled_objects"].as_u64().is_some_and(|n| n > 0),
        "{runs:?}"
    );
    let id = runs[0]["run_id"].as_str().expect("id").to_owned();

    // Back up: the command the run printed uploads the rest, and ls says nothing waits.
    proxy.thaw();
    let spooled_store = format!("{}/s3___hang", spool.display());
    let mut push = vec![
        "push".to_owned(),
        id.clone(),
        "--store".into(),
        spooled_store.clone(),
        "--to".into(),
        "s3://hang".into(),
    ];
    for (k, v) in s3_options(proxy.addr()) {
        push.extend(["--to-opt".to_owned(), format!("{k}={v}")]);
    }
    let push_ref: Vec<&str> = push.iter().map(String::as_str).collect();
    ok(&harness(&d, &push_ref, &[]).await);
    let objects = everything(direct.as_ref()).await;
    for c in 1..=4 {
        let cell = format!("concurrency={c},isl=16,osl=8");
        assert!(
            objects
                .keys()
                .any(|k| k.ends_with(&format!("cells/{cell}/records.parquet"))),
            "{cell} is missing from the bucket"
        );
    }
}
