//! Reports, interop and comparison through the `harness` binary: the HTML report rendered
//! by headless Chromium, parquet read by pyarrow and pandas, and `harness compare` with
//! regression gates between runs against the mock at known ITLs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs a one-or-more-cell experiment against the mock; returns the run's folder.
fn run(dir: &Path, name: &str, itl_ms: f64, concurrency: &str, requests: u32) -> PathBuf {
    let body = format!(
        "name: {name}\nmodel: {{name: m}}\nconcurrency: {concurrency}\nbenchmark:\n  isl_osl: [[32, 16]]\n\
         deployment:\n  mock: {{ttft_ms: 5, itl_ms: {itl_ms}, jitter: 0.1}}\nload:\n  requests: {requests}\n  preflight: false\n"
    );
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, body).expect("write");
    ok(&harness(
        dir,
        &["run", file.to_str().expect("path"), "--no-progress"],
    ));
    let runs = dir.join("harness-runs/runs").join(name);
    let mut all: Vec<PathBuf> = std::fs::read_dir(&runs)
        .expect("runs")
        .map(|e| e.expect("entry").path())
        .collect();
    all.sort();
    all.pop().expect("a run")
}

fn run_id(path: &Path) -> String {
    path.file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The quickstart, with fewer requests per cell.
    let quickstart = repo().join("experiments/quickstart.yaml");
    ok(&harness(
        d,
        &[
            "run",
            quickstart.to_str().expect("path"),
            "--no-progress",
            "--set",
            "load.requests=12",
        ],
    ));
    let run_dir = std::fs::read_dir(d.join("harness-runs/runs/quickstart"))
        .expect("runs")
        .next()
        .expect("a run")
        .expect("entry")
        .path();
    let index = run_dir.join("report/index.html");
    let html = std::fs::read_to_string(&index).expect("the run wrote its report");
    assert!(html.contains("<svg") && html.contains("concurrency=16,isl=512,osl=64"));
    for chart in ["ttft", "itl", "request_latency", "throughput", "pareto"] {
        assert!(
            run_dir.join(format!("report/charts/{chart}.png")).exists(),
            "{chart}"
        );
    }
    assert!(
        !html.contains("src=\"http"),
        "self-contained: nothing loaded from the network"
    );
    let md = std::fs::read_to_string(run_dir.join("report/report.md")).expect("report.md");
    assert!(
        md.contains("| concurrency=1,isl=128,osl=32 | succeeded |"),
        "{md}"
    );
    // Written at teardown, before the manifest's last write: the status comes from the cells.
    assert!(md.contains("- **status**: succeeded"), "{md}");
    // `harness report` rebuilds it and says where it is.
    std::fs::remove_file(&index).expect("rm");
    let out = ok(&harness(d, &["report", &run_id(&run_dir)]));
    assert!(out.contains("report/index.html") && index.exists(), "{out}");

    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is installed by scripts/test-deps.sh");
    let shot = d.join("shot.png");
    let status = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1200,2400",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", index.display()))
        .output()
        .expect("chromium runs");
    assert!(status.status.success(), "{}", text(&status.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("screenshot"),
    ));
    let mut reader = decoder.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("frame");
    let px = &buf[..info.buffer_size()];
    let step = info.color_type.samples();
    let non_white = px
        .chunks(step)
        .filter(|p| p[..3].iter().any(|c| *c < 200))
        .count();
    let colours: std::collections::BTreeSet<&[u8]> = px.chunks(step).map(|p| &p[..3]).collect();
    assert!(
        non_white > 20_000 && colours.len() > 20,
        "the page rendered text, tables and charts: {non_white} dark pixels, {} colours",
        colours.len()
    );
}

#[test]
fn pyarrow_and_pandas_read_the_parquet_files() {
    let python = deps().join("pyarrow/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/test-deps.sh",
        python.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let run_dir = run(dir.path(), "interop", 2.0, "[1, 2]", 10);
    let script = r#"
import json, sys
import pyarrow.parquet as pq
import pandas as pd
run = sys.argv[1]
summary = pq.read_table(run + "/summary.parquet")
meta = {k.decode(): v.decode() for k, v in summary.schema.metadata.items()}
assert meta["harness.schema"] == "summary", meta
assert meta["harness.schema_version"] == "1", meta
unit = summary.schema.field("ttft.p50").metadata[b"unit"].decode()
formula = summary.schema.field("itl.p50").metadata[b"formula"].decode()
df = summary.to_pandas()
cells = sorted(df["cell"].tolist())
records = pd.read_parquet(run + "/cells/concurrency=2,isl=32,osl=16/records.parquet")
ok = records[records["error_kind"].isna() & ~records["warmup"]]
print(json.dumps({
    "cells": cells,
    "concurrency": sorted(df["concurrency"].tolist()),
    "unit": unit,
    "formula": formula,
    "ttft_p50": float(df.loc[df["cell"] == "concurrency=2,isl=32,osl=16", "ttft.p50"].iloc[0]),
    "records": len(records),
    "pandas_ttft_median": float(ok["ttft_ms"].median()),
    "gaps_first": len(records["chunk_gaps_ns"].iloc[0]),
}))
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&run_dir)
        .output()
        .expect("python runs");
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).expect("json");
    assert_eq!(
        v["cells"],
        serde_json::json!(["concurrency=1,isl=32,osl=16", "concurrency=2,isl=32,osl=16"])
    );
    assert_eq!(v["concurrency"], serde_json::json!([1.0, 2.0]));
    assert_eq!(
        (v["unit"].as_str(), v["formula"].as_str()),
        (Some("ms"), Some("itl.per_request_mean"))
    );
    assert_eq!(v["records"], 10);
    assert_eq!(v["gaps_first"], 15, "16 tokens, 15 gaps");
    // pandas' median of the per-request TTFT equals our p50 (both exact, linear).
    let (ours, theirs) = (
        v["ttft_p50"].as_f64().expect("p50"),
        v["pandas_ttft_median"].as_f64().expect("median"),
    );
    assert!((ours - theirs).abs() < 1e-9, "{ours} vs {theirs}");
}

#[test]
fn compare_flags_a_slower_itl_and_the_gate_fails_only_then() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let base = run_id(&run(d, "itl10", 10.0, "[4]", 40));
    let same = run_id(&run(d, "itl10", 10.0, "[4]", 40));
    let slow = run_id(&run(d, "itl12", 12.0, "[4]", 40));

    let out = harness(
        d,
        &[
            "compare",
            &base,
            &slow,
            "--fail-if",
            "itl.p50 > +5%",
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).expect("json");
    let itl = v["cells"][0]["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["metric"] == "itl.p50")
        .expect("itl.p50")
        .clone();
    assert_eq!(itl["significant"], true, "{itl}");
    let rel = itl["relative"].as_f64().expect("relative");
    assert!((0.12..0.28).contains(&rel), "12 ms vs 10 ms: {rel}");
    assert!(
        text(&out.stderr).contains("gate tripped: itl.p50 > +5%"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(v["tripped"].as_array().map(Vec::len), Some(1));

    let out = harness(d, &["compare", &base, &same, "--fail-if", "itl.p50 > +5%"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let table = text(&out.stdout);
    assert!(
        table.contains("itl.p50") && table.contains("baseline: itl10/"),
        "{table}"
    );
    // The overlay charts were written.
    let charts = d.join("harness-compare").join(format!("{base}-vs-{same}"));
    assert!(charts.join("compare-itl-p50.svg").exists() && charts.join("compare.md").exists());

    // Cells present in only one run are listed, not dropped.
    let other = run_id(&run(d, "itl10", 10.0, "[2]", 8));
    let out = ok(&harness(d, &["compare", &base, &other]));
    assert!(
        out.contains("only in itl10/") && out.contains("concurrency=2,isl=32,osl=16"),
        "{out}"
    );
    // A bad gate is invalid input, named.
    let bad = harness(d, &["compare", &base, &same, "--fail-if", "itl.p50 >> 5"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("itl.p50 >> 5"),
        "{}",
        text(&bad.stderr)
    );
}
