//! Experiment files: the proposal's format, the default file, located errors for malformed
//! files, hostile input, and `--set` overrides.

use std::path::Path;
use std::time::{Duration, Instant};

use harness_core::{Error, Experiment, Pipeline, StepRegistry};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// Loads the file and builds its steps: the same checks `harness validate` makes.
fn load_and_build(path: &Path) -> Result<Experiment, Error> {
    let exp = Experiment::from_path(path)?;
    let _builder = StepRegistry::with_builtins().build_into(
        &exp,
        &path.display().to_string(),
        Pipeline::builder(),
    )?;
    Ok(exp)
}

#[test]
fn the_proposal_example_is_valid_and_has_33_cells() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../experiments/proposal.yaml"
    ));
    let exp = Experiment::from_path(path).expect("the proposal's format is valid as is");
    let plan = exp.plan().expect("plan");
    assert_eq!(plan.len(), 33);
    let ids: Vec<&str> = plan.cells().iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids[0], "concurrency=1,isl=8192,osl=1024");
    assert_eq!(ids[10], "concurrency=1024,isl=8192,osl=1024");
    assert_eq!(ids[11], "concurrency=1,isl=1024,osl=1024");
    assert_eq!(ids[32], "concurrency=1024,isl=1024,osl=8192");
    assert_eq!(exp.model.name, "RedHat/Llama-3.3-70B-Instruct");
    assert_eq!(exp.endpoint, "/v1/chat/completions");
}

#[test]
fn the_default_experiment_is_valid() {
    let exp = Experiment::from_yaml_str(harness_core::config::DEFAULT_EXPERIMENT, "default.yaml")
        .expect("the embedded default experiment parses");
    assert_eq!(exp.plan().expect("plan").len(), 33);
    assert_eq!(exp.policy.retries, 2);
    assert_eq!(exp.policy.step_timeout.get(), Duration::from_secs(1800));
    // Every documented default equals the built-in default.
    let minimal = Experiment::from_yaml_str(
        "name: my-experiment\ndescription: \"what this experiment is for\"\nmodel: {name: RedHat/Llama-3.3-70B-Instruct, path: /path/to/model}\n\
         concurrency: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]\nbenchmark: {isl_osl: [[8192, 1024], [1024, 1024], [1024, 8192]]}\n\
         storage: {url: file://./harness-runs}\n",
        "minimal.yaml",
    )
    .expect("minimal");
    assert_eq!(
        exp, minimal,
        "the commented defaults must match the built-in ones"
    );
}

#[derive(serde::Deserialize)]
struct Expected {
    file: String,
    at: String,
    path: String,
    contains: String,
}

#[test]
fn every_malformed_fixture_is_rejected_with_a_located_specific_message() {
    let expected: Vec<Expected> = serde_json::from_slice(
        &std::fs::read(fixtures().join("expected.json")).expect("expected.json"),
    )
    .expect("expected.json parses");
    assert!(expected.len() >= 20, "at least 20 malformed fixtures");
    let on_disk = std::fs::read_dir(fixtures().join("invalid"))
        .expect("dir")
        .count();
    assert_eq!(on_disk, expected.len(), "every fixture has an expectation");
    let mut failures = Vec::new();
    for case in &expected {
        let path = fixtures().join("invalid").join(&case.file);
        let check = std::panic::catch_unwind(|| check_fixture(case, &path));
        if let Err(p) = check {
            failures.push(p.downcast_ref::<String>().cloned().unwrap_or_default());
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixtures failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_fixture(case: &Expected, path: &Path) {
    {
        let result = std::panic::catch_unwind(|| load_and_build(path));
        let err = match result {
            Err(_) => panic!("{}: loading panicked", case.file),
            Ok(Ok(_)) => panic!("{}: was accepted", case.file),
            Ok(Err(e)) => e,
        };
        let Error::Config(c) = &err else {
            panic!("{}: expected a config error, got {err:?}", case.file)
        };
        let text = c.to_string();
        assert!(
            text.starts_with(&path.display().to_string()),
            "{}: names the file: {text}",
            case.file
        );
        assert!(
            c.line.is_some() && c.column.is_some(),
            "{}: has line and column: {text}",
            case.file
        );
        if !case.at.is_empty() {
            let at = format!("{}:{}", c.line.unwrap_or(0), c.column.unwrap_or(0));
            assert!(
                at.starts_with(&case.at),
                "{}: expected at {}, got {at}: {text}",
                case.file,
                case.at
            );
        }
        assert!(
            c.path.starts_with(&case.path),
            "{}: expected path {}, got {}: {text}",
            case.file,
            case.path,
            c.path
        );
        assert!(
            text.contains(&case.contains),
            "{}: expected {:?} in: {text}",
            case.file,
            case.contains
        );
        assert!(!c.message.is_empty(), "{}: has a message", case.file);
        // The experiment's terms, never the parser's or Rust's.
        for jargon in [
            "Option<",
            "u32",
            "u64",
            "f64",
            "usize",
            "struct ",
            "scalar",
            "weak recursion",
            "deserialize",
            "sequence",
        ] {
            assert!(
                !text.contains(jargon),
                "{}: `{jargon}` in: {text}",
                case.file
            );
        }
    }
}

fn assert_refused_quickly(name: &str, bytes: &[u8]) -> String {
    let start = Instant::now();
    let result = std::panic::catch_unwind(|| Experiment::from_yaml_bytes(bytes, name));
    let elapsed = start.elapsed();
    let err = match result {
        Err(_) => panic!("{name}: panicked"),
        Ok(Ok(_)) => panic!("{name}: was accepted"),
        Ok(Err(e)) => e,
    };
    // Generous bound: this guards against exponential blow-up, not against a slow machine.
    assert!(
        elapsed < Duration::from_secs(20),
        "{name}: took {elapsed:?}"
    );
    err.to_string()
}

#[test]
fn hostile_yaml_is_refused_in_bounded_time_without_panic() {
    let head = "name: t\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[1, 1]]}\n";
    // Billion laughs: nine levels of nine aliases.
    let mut bomb = String::from(head);
    bomb.push_str("description: &a0 [x, x, x, x, x, x, x, x, x]\n");
    bomb.push_str("sweep:\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        bomb.push_str(&format!("  l{i}: &a{i} [{refs}]\n"));
    }
    let msg = assert_refused_quickly("bomb.yaml", bomb.as_bytes());
    assert!(msg.contains("bomb.yaml"), "{msg}");

    // Deep nesting, flow and block.
    let deep_flow = format!(
        "{head}sweep: {{x: {}{}}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_refused_quickly("deep-flow.yaml", deep_flow.as_bytes());
    let mut deep_block = String::from(head);
    deep_block.push_str("sweep:\n");
    for i in 0..2000 {
        deep_block.push_str(&format!("{}a:\n", " ".repeat(i + 2)));
    }
    assert_refused_quickly("deep-block.yaml", deep_block.as_bytes());

    // A multi-megabyte value.
    let big = format!(
        "name: t\ndescription: \"{}\"\n{}",
        "x".repeat(3 << 20),
        &head[8..]
    );
    let msg = assert_refused_quickly("big.yaml", big.as_bytes());
    assert!(msg.contains("at most"), "{msg}");

    // Binary junk, and text with control characters.
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let msg = assert_refused_quickly("junk.bin", &junk);
    assert!(msg.contains("junk.bin:1:"), "{msg}");
    let msg = assert_refused_quickly("nul.yaml", b"name: t\nmodel: {name: \x00m}\n");
    assert!(msg.contains("nul.yaml:2:"), "{msg}");
    // Empty input.
    assert_refused_quickly("empty.yaml", b"");
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("huge.yaml");
    std::fs::write(
        &path,
        vec![b'#'; harness_core::config::MAX_CONFIG_BYTES + 1],
    )
    .expect("write");
    let err = Experiment::from_path(&path).expect_err("too big");
    assert!(err.to_string().contains("at most"), "{err}");
    let missing = Experiment::from_path(dir.path().join("missing.yaml")).expect_err("missing");
    assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
    assert!(missing.to_string().contains("missing.yaml"), "{missing}");
}

fn base() -> Experiment {
    Experiment::from_yaml_str(
        "name: t\nmodel: {name: m}\nconcurrency: [1, 2]\nbenchmark: {isl_osl: [[128, 32]]}\n",
        "base.yaml",
    )
    .expect("base")
}

#[test]
fn overrides_set_nested_values_read_as_yaml() {
    let exp = base()
        .with_overrides(&[
            "concurrency=[4, 8, 16]",
            "policy.fail_fast=true",
            "policy.step_timeout=90s",
            "model.path=/models/x",
        ])
        .expect("overrides apply");
    assert_eq!(exp.plan().expect("plan").len(), 3);
    assert!(exp.policy.fail_fast);
    assert_eq!(exp.policy.step_timeout.get(), Duration::from_secs(90));
    assert_eq!(exp.model.path.as_deref(), Some("/models/x"));
    // A new section is created on the way.
    let exp = base()
        .with_overrides(&["load.requests=100"])
        .expect("new section");
    assert_eq!(exp.load.requests.map(|r| r.get()), Some(100));
}

#[test]
fn bad_overrides_name_the_override_and_the_field() {
    for (set, path, fragment) in [
        ("concurrency=[0]", "concurrency[0]", "nonzero"),
        ("policy.retries=many", "policy.retries", ""),
        ("polcy.retries=1", "polcy", "unknown field `polcy`"),
        ("no-equals-sign", ".", "key.path=value"),
        ("name.first=x", "name.first", "not a section"),
        ("a..b=1", "a..b", "empty segment"),
        ("endpoint=v1", "endpoint", "starting with `/`"),
    ] {
        let err = base().with_overrides(&[set]).expect_err(set);
        let Error::Config(c) = &err else {
            panic!("{set}: expected a config error, got {err:?}")
        };
        assert_eq!(c.file, format!("--set {set}"), "{set}: names the override");
        assert!(
            c.path.starts_with(path),
            "{set}: path {} should start with {path}",
            c.path
        );
        assert!(c.to_string().contains(fragment), "{set}: {c}");
    }
}

#[test]
fn the_resolved_experiment_round_trips_through_json_and_yaml() {
    let exp = Experiment::from_yaml_str(harness_core::config::DEFAULT_EXPERIMENT, "d.yaml")
        .expect("default");
    let back = Experiment::from_json(&exp.to_json(), "json").expect("json round trip");
    assert_eq!(exp, back);
    let again = Experiment::from_yaml_str(&exp.to_yaml(), "yaml").expect("yaml round trip");
    assert_eq!(exp, again);
}

#[test]
fn manifests_with_a_url_keep_it_through_a_round_trip() {
    let yaml = "name: t\nmodel: {name: m}\nconcurrency: [1]\nbenchmark: {isl_osl: [[1, 1]]}\n\
                backend: {kind: kubernetes}\n\
                deployment: {manifests: dgd.yaml, url: 'http://gateway.bench:80/'}\n";
    let exp = Experiment::from_yaml_str(yaml, "t.yaml").expect("manifests and a url");
    let harness_core::config::Deployment::Manifests { manifests, url, .. } = &exp.deployment else {
        panic!("{:?}", exp.deployment)
    };
    assert_eq!(manifests, "dgd.yaml");
    assert_eq!(url.as_deref(), Some("http://gateway.bench:80"));
    let back = Experiment::from_json(&exp.to_json(), "json").expect("json round trip");
    assert_eq!(exp, back);
}
