//! Importers against exports of the real tools (aiperf 0.13.0 and inference-perf 0.7.0 run
//! against harness' mock with injected 500s and disconnects) and hand-made files in the
//! documented layouts of tools that cannot be installed here (vLLM, genai-perf).

use std::path::{Path, PathBuf};

use harness_analytics::CellStats;
use harness_analytics::import::{self, Format, Imported};
use harness_analytics::record::{ErrorKind, TokenSource};
use harness_core::config::Slo;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name)
}

fn stats(i: &Imported) -> CellStats {
    CellStats::of(&i.records, &Slo::default()).expect("stats")
}

/// Our statistic `metric` recomputed from the imported records equals what the tool
/// reported, to `tol` (ms or the metric's unit).
fn agrees(i: &Imported, s: &CellStats, metric: &str, tol: f64) {
    let ours = s.value(metric).unwrap_or_else(|| panic!("no {metric}"));
    let theirs = *i
        .reported
        .get(metric)
        .unwrap_or_else(|| panic!("{} reported no {metric}", i.tool));
    assert!(
        (ours - theirs).abs() <= tol,
        "{metric}: ours {ours}, {} {theirs}",
        i.tool
    );
}

fn errors(s: &CellStats, kind: ErrorKind) -> u64 {
    s.errors.get(kind.as_str()).copied().unwrap_or(0)
}

#[test]
fn aiperf_exports_import_with_warmup_errors_and_the_same_statistics() {
    let i = import::import(Format::Aiperf, &fixture("aiperf")).expect("import");
    assert_eq!(i.tool, "aiperf 0.13.0");
    assert_eq!(i.records.len(), 44);
    assert_eq!(i.records.iter().filter(|r| r.warmup).count(), 4);
    assert_eq!(i.records[0].start_ns, 0, "times start at the first request");
    assert!(i.records.windows(2).all(|w| w[0].start_ns <= w[1].start_ns));
    let s = stats(&i);
    assert_eq!(s.requests, 40, "warmup excluded");
    assert_eq!(s.succeeded, 28);
    assert_eq!(errors(&s, ErrorKind::HttpStatus), 4);
    assert_eq!(errors(&s, ErrorKind::Disconnect), 8);
    let failed = i.records.iter().find(|r| r.http_status == Some(500));
    assert!(
        failed.is_some_and(|r| r
            .error_message
            .as_deref()
            .unwrap_or("")
            .contains("injected")),
        "the server's message is kept"
    );
    // Run with --use-server-token-count: every success counts 32 tokens from usage.
    let ok: Vec<_> = i.records.iter().filter(|r| r.ok()).collect();
    assert!(
        ok.iter()
            .all(|r| r.output_tokens == 32 && r.output_token_source == TokenSource::Usage)
    );
    assert!(ok.iter().all(|r| r.chunk_gaps_ns.len() == 31));
    // Recomputed statistics match aiperf's own to within rounding of the export.
    for m in [
        "ttft.p50",
        "ttft.p99",
        "ttft.mean",
        "ttft.min",
        "itl.p50",
        "itl.p90",
        "request_latency.p50",
        "request_latency.max",
        "inter_chunk_latency.p50",
        "output_sequence_length.mean",
    ] {
        agrees(&i, &s, m, 1e-4);
    }
}

#[test]
fn inference_perf_exports_import_with_their_errors_and_statistics() {
    let i = import::import(Format::InferencePerf, &fixture("inference-perf")).expect("import");
    assert_eq!(i.tool, "inference-perf");
    assert_eq!(i.records.len(), 20);
    let s = stats(&i);
    assert_eq!(s.succeeded, 13);
    assert_eq!(errors(&s, ErrorKind::HttpStatus), 3);
    assert_eq!(errors(&s, ErrorKind::Disconnect), 4);
    assert!(i.records.iter().any(|r| r.http_status == Some(500)));
    assert!(
        i.records
            .iter()
            .filter(|r| r.ok())
            .all(|r| r.output_tokens == 16 && r.output_token_source == TokenSource::Usage)
    );
    for m in ["ttft.p50", "ttft.p90", "ttft.max", "itl.p50", "itl.mean"] {
        agrees(&i, &s, m, 1e-3);
    }
    // Request latency there is start to end of response; ours to the last token: never longer.
    assert!(s.value("request_latency.p50") <= i.reported.get("request_latency.p50").copied());
}

#[test]
fn vllm_bench_results_import_per_request() {
    let i = import::import(Format::VllmBench, &fixture("vllm-bench/result.json")).expect("import");
    assert_eq!(i.records.len(), 4);
    let s = stats(&i);
    assert_eq!(s.succeeded, 3);
    assert_eq!(errors(&s, ErrorKind::Disconnect), 1);
    // vLLM's TPOT is our ITL, its ITL our inter-chunk latency.
    for m in [
        "ttft.mean",
        "ttft.p50",
        "itl.mean",
        "itl.p50",
        "inter_chunk_latency.mean",
    ] {
        agrees(&i, &s, m, 1e-6);
    }
    let first = &i.records[0];
    assert_eq!(first.ttft_s(), Some(0.05));
    assert_eq!(first.chunk_gaps_ns, vec![10_000_000, 11_000_000, 9_000_000]);
    assert_eq!(i.records[3].start_ns, 83_000_000, "start_times are kept");
}

#[test]
fn genai_perf_exports_import_from_their_sse_payloads() {
    let i = import::import(Format::GenaiPerf, &fixture("genai-perf")).expect("import");
    assert_eq!(i.tool, "genai-perf (perf_analyzer 2.59)");
    let [a, b, c] = i.records.as_slice() else {
        panic!("3 records, got {}", i.records.len())
    };
    // The role-only first chunk is not content: TTFT is the first content chunk.
    assert_eq!(a.ttft_s(), Some(0.05));
    assert_eq!(a.chunk_gaps_ns, vec![10_000_000; 3]);
    assert_eq!(
        (a.output_tokens, a.output_token_source, a.input_tokens),
        (4, TokenSource::Usage, 12)
    );
    assert_eq!(a.end_ns, 81_000_000);
    assert_eq!(
        (b.output_tokens, b.output_token_source),
        (3, TokenSource::Chunks)
    );
    assert_eq!(b.start_ns, 5_000_000);
    assert_eq!(c.error, Some(ErrorKind::Disconnect));
    let s = stats(&i);
    assert_eq!((s.requests, s.succeeded), (3, 2));
    assert_eq!(s.value("itl.p50"), Some(12.5), "10 ms and 15 ms");
}

#[test]
fn broken_exports_are_refused_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(fixture("aiperf/profile_export.jsonl")).expect("read");
    let mut lines: Vec<&str> = good.lines().take(3).collect();
    lines.push("{\"metadata\": {\"request_start_ns\": 1}, \"metrics\": {\"time_to_first");
    let file = dir.path().join("profile_export.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write");
    let e = import::import(Format::Aiperf, dir.path()).expect_err("truncated line");
    let msg = e.to_string();
    assert!(msg.contains("profile_export.jsonl:4"), "{msg}");

    std::fs::write(&file, "{\"metrics\": {}}\n").expect("write");
    let msg = import::import(Format::Aiperf, &file)
        .expect_err("no metadata")
        .to_string();
    assert!(msg.contains(":1") && msg.contains("metadata"), "{msg}");

    let e = import::import(Format::Aiperf, &dir.path().join("missing")).expect_err("missing");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let empty = tempfile::tempdir().expect("tempdir");
    let e = import::import(Format::Guidellm, empty.path()).expect_err("no file");
    assert!(e.to_string().contains("benchmarks.json"), "{e}");

    let v = dir.path().join("result.json");
    std::fs::write(&v, r#"{"ttfts": [0.1, 0.2], "itls": [[0.01]]}"#).expect("write");
    let e = import::import(Format::VllmBench, &v).expect_err("ragged");
    assert!(e.to_string().contains("`itls` has 1 entries"), "{e}");
    std::fs::write(&v, r#"{"duration": 3.0}"#).expect("write");
    let e = import::import(Format::VllmBench, &v).expect_err("not detailed");
    assert!(e.to_string().contains("--save-detailed"), "{e}");
}

#[test]
fn guidellm_reports_import_with_their_errors() {
    let i = import::import(Format::Guidellm, &fixture("guidellm")).expect("import");
    assert_eq!(i.tool, "guidellm 0.8.1");
    assert_eq!(i.records.len(), 30);
    let s = stats(&i);
    assert_eq!(s.succeeded, 19);
    let (status, disconnects) = (
        errors(&s, ErrorKind::HttpStatus),
        errors(&s, ErrorKind::Disconnect),
    );
    assert_eq!(status + disconnects, 11, "{:?}", s.errors);
    assert!(status > 0 && disconnects > 0, "{:?}", s.errors);
    assert!(i.records.iter().any(|r| r.http_status == Some(500)));
    assert!(
        i.records
            .iter()
            .filter(|r| r.ok())
            .all(|r| r.output_tokens == 16 && r.content_chunks == 16)
    );
    // Per-request values are guidellm's; its percentiles are not interpolated, so
    // compare means and extremes (time values are floats of epoch seconds: ~1 µs).
    for m in ["ttft.mean", "ttft.min", "ttft.max", "itl.mean", "itl.max"] {
        agrees(&i, &s, m, 2e-3);
    }
    // guidellm's request latency ends with the response, ours with the last token.
    assert!(s.value("request_latency.max") <= i.reported.get("request_latency.max").copied());
}

/// Writes `value` as JSON into `dir/name` and returns the path.
fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> std::path::PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&path, serde_json::to_string(value).expect("json")).expect("write");
    path
}

fn read_fixture(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).expect("read")).expect("json")
}

/// Times out of order, or contradicting each other, in each tool's export: a located error,
/// never a panic or a wrapped subtraction.
#[test]
fn contradictory_timestamps_in_any_export_are_located_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let refused = |format: Format, path: &Path, wants: &[&str]| {
        let msg = import::import(format, path)
            .expect_err("contradictory times are refused")
            .to_string();
        for w in wants {
            assert!(msg.contains(w), "`{w}` missing from: {msg}");
        }
    };

    // genai-perf: a request's response timestamps out of order.
    let mut g = read_fixture("genai-perf/profile_export.json");
    let stamps = g
        .pointer_mut("/experiments/0/requests/1/response_timestamps")
        .and_then(|v| v.as_array_mut())
        .expect("timestamps");
    stamps.swap(0, 2);
    let p = write_json(d, "genai/profile_export.json", &g);
    refused(
        Format::GenaiPerf,
        &p,
        &["profile_export.json", "request 1", "out of order"],
    );

    // inference-perf: chunk times out of order.
    let mut i = read_fixture("inference-perf/per_request_lifecycle_metrics.json");
    let chunks = i
        .pointer_mut("/2/info/response_metrics/chunk_times")
        .and_then(|v| v.as_array_mut())
        .expect("chunk_times");
    chunks.reverse();
    let p = write_json(d, "ip/per_request_lifecycle_metrics.json", &i);
    refused(
        Format::InferencePerf,
        &p,
        &[
            "per_request_lifecycle_metrics.json",
            "request 2",
            "out of order",
        ],
    );

    // guidellm: the first token before the request started.
    let mut gl = read_fixture("guidellm/benchmarks.json");
    let r = gl
        .pointer_mut("/benchmarks/0/requests/successful/0")
        .expect("request");
    let start = r["request_start_time"].as_f64().expect("start");
    r["info"]["timings"]["first_token_iteration"] = serde_json::json!(start - 1.0);
    let p = write_json(d, "gl/benchmarks.json", &gl);
    refused(
        Format::Guidellm,
        &p,
        &[
            "benchmarks.json",
            "successful request 0",
            "before the request's start",
        ],
    );

    // aiperf: a request latency shorter than its TTFT, on line 2.
    let text = std::fs::read_to_string(fixture("aiperf/profile_export.jsonl")).expect("read");
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let at = lines
        .iter()
        .position(|l| {
            l["metrics"]["time_to_first_token"]["value"]
                .as_f64()
                .is_some_and(|t| t > 1.0)
        })
        .expect("a streamed request");
    lines[at]["metrics"]["request_latency"]["value"] = serde_json::json!(0.5);
    let body: Vec<String> = lines
        .iter()
        .map(|v| serde_json::to_string(v).expect("json"))
        .collect();
    let p = d.join("aiperf/profile_export.jsonl");
    std::fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
    std::fs::write(&p, body.join("\n")).expect("write");
    refused(
        Format::Aiperf,
        &p,
        &[
            &format!("profile_export.jsonl:{}", at + 1),
            "shorter than its TTFT",
        ],
    );

    // vLLM: a start time past the clock's range.
    let mut v = read_fixture("vllm-bench/result.json");
    v["start_times"][0] = serde_json::json!(1e30);
    let p = write_json(d, "vllm/result.json", &v);
    refused(
        Format::VllmBench,
        &p,
        &["result.json", "request 0", "range"],
    );
}
