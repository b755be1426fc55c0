//! Treatments and the SLO search, end to end through `App::run` against the mock: each
//! treatment deployed in turn, a failing one isolated and resumed, and a search that must
//! find each treatment's known capacity.

use std::sync::{Arc, Mutex};

use harness::core::config::Stage;
use harness::core::{ArtifactStoreExt, CellStatus, Event, Experiment, Reporter, RunStatus};
use harness::{App, RunOptions};

/// Collects the setup steps that ran, to see which treatments were deployed.
#[derive(Default)]
struct Deploys(Mutex<Vec<String>>);

impl Reporter for Deploys {
    fn on_event(&self, event: &Event) {
        if let Event::StepStarted {
            stage: Stage::Setup,
            step,
            ..
        } = event
        {
            self.0.lock().expect("lock").push(step.clone());
        }
    }
}

/// The runs of these tests measure latency against SLOs: one at a time, so that they do not
/// load the machine for each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The ids of an experiment's planned cells, in order.
fn cell_ids(exp: &Experiment) -> Vec<String> {
    exp.plan()
        .expect("plan")
        .cells()
        .iter()
        .map(|c| c.id.to_string())
        .collect()
}

fn store_of(dir: &tempfile::TempDir) -> String {
    format!("file://{}", dir.path().display())
}

/// The experiment file of the README, whose search must find the mock's 4 and 16 slots.
fn capacity_experiment() -> Experiment {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../experiments/treatments-search.yaml"
    );
    Experiment::from_path(path).expect("experiment")
}

/// With TTFT 20 ms, ITL 2 ms and 32 output tokens, a request holds a slot for 82 ms; one
/// more client than slots waits for a whole response, so `ttft.p99 <= 30ms` holds up to the
/// number of slots exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_finds_each_treatments_capacity() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let exp = capacity_experiment();
    assert_eq!(exp.treatment_names(), ["slots-4", "slots-16"]);
    let outcome = App::default()
        .run(
            exp,
            RunOptions::new().store(store_of(&dir)).run_id("search"),
        )
        .await
        .expect("run");
    assert_eq!(outcome.report.status, RunStatus::Succeeded, "{outcome:?}");
    let found: Vec<_> = outcome
        .report
        .search
        .iter()
        .map(|o| {
            (
                o.treatment.clone().unwrap_or_default(),
                o.best,
                o.first_fail,
                o.converged,
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("slots-4".to_owned(), Some(4.0), Some(5.0), true),
            ("slots-16".to_owned(), Some(16.0), Some(17.0), true),
        ],
        "{:#?}",
        outcome.report.search
    );
    // Every probe is an ordinary stored cell; the candidates not needed are skipped.
    let probes: usize = outcome.report.search.iter().map(|o| o.probes.len()).sum();
    let ran = outcome
        .report
        .cells
        .iter()
        .filter(|c| c.status == CellStatus::Succeeded)
        .count();
    assert_eq!(ran, probes);
    assert!(
        outcome
            .report
            .cells
            .iter()
            .all(|c| matches!(c.status, CellStatus::Succeeded | CellStatus::Skipped))
    );
    let stored: serde_json::Value = outcome
        .run
        .store()
        .get_json(&outcome.run.layout().search())
        .await
        .expect("search.json");
    assert_eq!(stored[1]["best"], 16.0);
    assert_eq!(stored[1]["treatment"], "slots-16");
    let confirmed = stored[1]["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .any(|p| p["repeat"] == 2 && p["value"] == 16.0 && p["verdict"] == "pass");
    assert!(confirmed, "the best value is probed twice: {stored}");
    // The report ranks the treatments by throughput at their best passing load: 16 slots
    // at concurrency 16 serve more than 4 at 4.
    let md = outcome
        .run
        .store()
        .get(&outcome.run.layout().report("report.md").expect("key"))
        .await
        .expect("report.md");
    let md = String::from_utf8_lossy(&md);
    let first = md.find("| 1 | slots-16 |").expect("slots-16 ranked first");
    let second = md.find("| 2 | slots-4 |").expect("slots-4 ranked second");
    assert!(
        first < second && md.contains("## Treatments ranked"),
        "{md}"
    );
}

/// A treatment whose deployment fails fails its own cells with the reason; the other
/// treatment runs; a resume deploys only the failed treatment again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_treatment_is_isolated_and_resumed_alone() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A port where nothing listens yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let yaml = format!(
        "name: treatments-fail\n\
         model: {{name: harness-mock}}\n\
         concurrency: [1, 2]\n\
         benchmark: {{isl_osl: [[16, 4]]}}\n\
         load: {{requests: 4}}\n\
         policy: {{ready_timeout: 1s, retries: 0}}\n\
         deployment: {{mock: {{ttft_ms: 1, itl_ms: 1}}}}\n\
         treatments:\n  \
           local: {{}}\n  \
           remote: {{deployment: {{url: \"http://127.0.0.1:{port}\", health: /health}}}}\n"
    );
    let exp = Experiment::from_yaml_str(&yaml, "treatments-fail.yaml").expect("experiment");
    let deploys = Arc::new(Deploys::default());
    let options = || {
        RunOptions::new()
            .store(store_of(&dir))
            .run_id("fail")
            .reporter(deploys.clone())
    };
    let first = App::default()
        .run(exp.clone(), options())
        .await
        .expect("first run");
    assert_eq!(first.report.status, RunStatus::Partial);
    for cell in &first.report.cells {
        let remote = cell.cell.as_str().starts_with("treatment=remote,");
        if remote {
            assert_eq!(cell.status, CellStatus::Failed, "{cell:?}");
            let message = &cell.error.as_ref().expect("error").message;
            assert!(message.contains("setup step"), "{message}");
        } else {
            assert_eq!(cell.status, CellStatus::Succeeded, "{cell:?}");
        }
    }
    assert_eq!(
        *deploys.0.lock().expect("lock"),
        ["mock", "wait-ready"],
        "each treatment is deployed once"
    );
    // The resolved deployment of each treatment is stored with the run.
    let manifest: serde_json::Value = first
        .run
        .store()
        .get_json(&first.run.layout().manifest())
        .await
        .expect("manifest");
    let stored = &manifest["experiment"]["treatments"];
    assert_eq!(stored[1]["name"], "remote");
    assert_eq!(
        stored[1]["deployment"]["url"],
        format!("http://127.0.0.1:{port}")
    );

    // The server comes up; the resume deploys only the treatment that failed.
    let cfg = harness::core::config::MockDeployment::default();
    let server = harness::llm::mock::MockServer::start(cfg, ([127, 0, 0, 1], port).into())
        .await
        .expect("mock");
    deploys.0.lock().expect("lock").clear();
    let resumed = App::default()
        .run(exp, options().resume())
        .await
        .expect("resume");
    server.shutdown().await;
    assert_eq!(resumed.report.status, RunStatus::Succeeded);
    assert_eq!(*deploys.0.lock().expect("lock"), ["wait-ready"]);
    let ran: Vec<_> = resumed
        .report
        .cells
        .iter()
        .filter(|c| c.ran)
        .map(|c| c.cell.as_str().to_owned())
        .collect();
    assert!(
        ran.iter().all(|c| c.starts_with("treatment=remote,")) && ran.len() == 2,
        "{ran:?}"
    );
}

/// Treatment errors name the treatment and its line; placeholders are filled per treatment.
#[test]
fn treatments_are_checked_where_they_are_written() {
    let yaml = "name: t\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[8, 8]]}\n\
                deployment: {command: [server, --parallel, \"{parallel}\", --port, \"{port}\"]}\n\
                treatments:\n  p1: {vars: {parallel: 1}}\n  p4:\n    vars: {parallel: 4}\n    \
                load: {requests: 0}\n";
    let err = Experiment::from_yaml_str(yaml, "t.yaml").expect_err("requests 0");
    let text = err.to_string();
    assert!(
        text.starts_with("t.yaml:8:") && text.contains("treatments.p4.load.requests"),
        "{text}"
    );
    let err = Experiment::from_yaml_str(
        "name: t\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[8, 8]]}\n\
         treatments:\n  a: {concurrency: [2]}\n",
        "t.yaml",
    )
    .expect_err("a treatment cannot change the sweep");
    assert!(
        err.to_string().contains("cannot set `concurrency`"),
        "{err}"
    );

    let ok = yaml.replace("requests: 0", "requests: 3");
    let exp = Experiment::from_yaml_str(&ok, "t.yaml").expect("valid");
    let p4 = exp.treatment("p4").expect("p4");
    let steps = harness::core::steps::DeploymentSteps::for_experiment(&p4, None).expect("steps");
    let described = format!("{:?}", steps.setup);
    assert!(
        described.contains("\"4\"") && described.contains("{port}"),
        "{described}"
    );
    let ids = cell_ids(&exp);
    assert_eq!(
        ids,
        [
            "treatment=p1,concurrency=1,isl=8,osl=8",
            "treatment=p4,concurrency=1,isl=8,osl=8"
        ]
    );
}

/// `only("treatment=<name>")` runs one treatment; the other's cells wait for a later run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_runs_the_named_treatment() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "name: only-one\nmodel: {name: m}\nconcurrency: [1, 2]\n\
                benchmark: {isl_osl: [[16, 4]]}\nload: {requests: 4}\n\
                deployment: {mock: {ttft_ms: 1, itl_ms: 1}}\n\
                treatments:\n  a: {}\n  b: {deployment: {mock: {ttft_ms: 2}}}\n";
    let exp = Experiment::from_yaml_str(yaml, "only.yaml").expect("experiment");
    let outcome = App::default()
        .run(
            exp,
            RunOptions::new().store(store_of(&dir)).only("treatment=b"),
        )
        .await
        .expect("run");
    let ran: Vec<&str> = outcome
        .report
        .cells
        .iter()
        .filter(|c| c.ran)
        .map(|c| c.cell.as_str())
        .collect();
    assert_eq!(
        ran,
        [
            "treatment=b,concurrency=1,isl=16,osl=4",
            "treatment=b,concurrency=2,isl=16,osl=4"
        ]
    );
    assert_eq!(outcome.report.status, RunStatus::Running, "a's cells wait");
}

/// A request-rate search plans its candidates from `min` by `precision` up to `max`, and a
/// search refuses a fixed list of the loop it varies.
#[test]
fn a_rate_search_plans_its_candidates() {
    let base = "name: r\nmodel: {name: m}\nbenchmark: {isl_osl: [[8, 8]]}\n\
                search: {axis: request_rate, min: 0.5, max: 2, precision: 0.5, slo: {ttft.p99: 1s}, confirm: false}\n";
    let exp = Experiment::from_yaml_str(base, "r.yaml").expect("experiment");
    let ids = cell_ids(&exp);
    assert_eq!(
        ids,
        [
            "request_rate=0.5,isl=8,osl=8",
            "request_rate=1,isl=8,osl=8",
            "request_rate=1.5,isl=8,osl=8",
            "request_rate=2,isl=8,osl=8"
        ]
    );
    let err = Experiment::from_yaml_str(&format!("{base}concurrency: [1]\n"), "r.yaml")
        .expect_err("a fixed list with a search");
    assert!(
        err.to_string().contains("leave the `concurrency` list out"),
        "{err}"
    );
    let err = Experiment::from_yaml_str(
        &base.replace("precision: 0.5", "precision: 0.0001"),
        "r.yaml",
    )
    .expect_err("too many candidates");
    assert!(err.to_string().contains("search.precision"), "{err}");
}
