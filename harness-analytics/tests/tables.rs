//! The metric tables: schema snapshots, parquet round trips, statistics from read-back
//! records, and bad input.

use std::path::Path;

use arrow_array::RecordBatch;
use harness_analytics::CellStats;
use harness_analytics::io::{from_parquet, to_parquet};
use harness_analytics::record::{ErrorKind, Record, TokenSource};
use harness_analytics::schema::{ParamType, SCHEMA_VERSION, records_schema, summary_schema};
use harness_analytics::table::{CellRow, records_batch, records_from_batch, summary_batch};
use harness_core::ParamValue;
use harness_core::config::Slo;

/// A schema as stable JSON: name, type, nullability and metadata of every field.
fn describe(schema: &arrow_schema::Schema) -> serde_json::Value {
    let fields: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| {
            let meta: std::collections::BTreeMap<_, _> = f.metadata().iter().collect();
            serde_json::json!({
                "name": f.name(),
                "type": format!("{}", f.data_type()),
                "nullable": f.is_nullable(),
                "metadata": meta,
            })
        })
        .collect();
    let meta: std::collections::BTreeMap<_, _> = schema.metadata().iter().collect();
    serde_json::json!({ "metadata": meta, "fields": fields })
}

/// Compares with the snapshot file; `HARNESS_UPDATE_SNAPSHOTS=1` rewrites it.
fn snapshot(name: &str, value: &serde_json::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    let text = serde_json::to_string_pretty(value).expect("json") + "\n";
    if std::env::var_os("HARNESS_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &text).expect("write snapshot");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (HARNESS_UPDATE_SNAPSHOTS=1 writes it)",
            path.display()
        )
    });
    assert_eq!(
        text, want,
        "{name} changed: if on purpose, bump SCHEMA_VERSION when a column is renamed, removed or retyped, and update the snapshot"
    );
}

#[test]
fn schema_snapshots() {
    snapshot("records_schema.json", &describe(&records_schema()));
    let params = [
        ("concurrency".to_owned(), ParamType::Number),
        ("isl".to_owned(), ParamType::Number),
        ("osl".to_owned(), ParamType::Number),
    ];
    snapshot(
        "summary_schema.json",
        &describe(&summary_schema(&params, &[])),
    );
}

fn sample_records() -> Vec<Record> {
    let mut out = Vec::new();
    for i in 0..50u64 {
        let start = i * 1_000_000;
        let mut r = Record::succeeded(
            i,
            start,
            start + 20_000_000 + i * 10_000,
            start + 100_000_000,
            9,
            TokenSource::Usage,
        );
        r.input_tokens = 128;
        r.warmup = i < 3;
        out.push(r);
    }
    let mut failed = Record::succeeded(50, 0, 1, 2, 1, TokenSource::Chunks);
    failed.first_token_ns = None;
    failed.last_token_ns = None;
    failed.output_tokens = 0;
    failed.chunk_gaps_ns.clear();
    failed.http_status = Some(500);
    failed.error = Some(ErrorKind::HttpStatus);
    failed.error_message = Some("HTTP 500: boom".into());
    out.push(failed);
    out
}

#[test]
fn records_round_trip_through_parquet_with_units_and_version() {
    let records = sample_records();
    let batch = records_batch(&records).expect("batch");
    let bytes = to_parquet(&batch).expect("parquet");
    // The file's own key-value metadata names the schema and its version.
    let reader =
        parquet::file::serialized_reader::SerializedFileReader::new(bytes.clone()).expect("reader");
    use parquet::file::reader::FileReader;
    let kv = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let get = |k: &str| kv.iter().find(|e| e.key == k).and_then(|e| e.value.clone());
    assert_eq!(get("harness.schema").as_deref(), Some("records"));
    assert_eq!(
        get("harness.schema_version"),
        Some(SCHEMA_VERSION.to_string())
    );

    let back = from_parquet(bytes).expect("read");
    assert_eq!(back.schema(), batch.schema(), "field metadata survives");
    let field = back
        .schema()
        .field_with_name("ttft_ms")
        .expect("ttft_ms")
        .clone();
    assert_eq!(field.metadata().get("unit").map(String::as_str), Some("ms"));
    assert_eq!(records_from_batch(&back).expect("records"), records);

    let slo = Slo::new(Some(std::time::Duration::from_millis(25)), None, None);
    let direct = CellStats::of(&records, &slo).expect("stats");
    let from_file = CellStats::of_batch(&back, &slo).expect("stats");
    assert_eq!(direct, from_file);
    assert_eq!(
        (direct.requests, direct.succeeded, direct.warmup_requests),
        (48, 47, 3)
    );
    assert_eq!(direct.errors.get("http_status"), Some(&1));
    // TTFT of request i is 20 ms + i * 10 us; measured requests are 3..50.
    let p50 = direct.value("ttft.p50").expect("p50");
    assert!((p50 - (20.0 + 26.0 * 0.01)).abs() < 1e-9, "{p50}");
    // ITL = 80 ms over 8 gaps minus the TTFT shift.
    assert!(
        direct
            .value("itl.p50")
            .is_some_and(|v| (9.0..10.0).contains(&v))
    );
    assert_eq!(direct.value("output_sequence_length.p50"), Some(9.0));
    assert_eq!(direct.main_token_source().as_deref(), Some("usage"));
    // Goodput: TTFT within 25 ms for every successful request.
    assert!((direct.goodput.expect("goodput") - direct.request_throughput).abs() < 1e-9);
}

#[test]
fn records_written_before_the_schedule_and_retry_columns_still_read() {
    let mut records = sample_records();
    records[5].scheduled_ns = Some(records[5].start_ns - 3_000_000);
    records[6].retried = true;
    let batch = records_batch(&records).expect("batch");
    let stats = CellStats::of_batch(&batch, &Slo::default()).expect("stats");
    assert_eq!(stats.retried, 1);
    let lag = stats.value("schedule_lag.max").expect("lag");
    assert!((lag - 3.0).abs() < 1e-9, "{lag}");
    // A file of an older version has neither column: no lag, no retries, no error.
    let old_columns: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| {
            !["scheduled_ns", "retried"].contains(&batch.schema().field(i).name().as_str())
        })
        .collect();
    let old = batch.project(&old_columns).expect("project");
    let back = records_from_batch(&old).expect("records");
    assert!(back.iter().all(|r| r.scheduled_ns.is_none() && !r.retried));
    let stats = CellStats::of_batch(&old, &Slo::default()).expect("stats");
    assert_eq!(stats.retried, 0);
    assert!(stats.value("schedule_lag.p50").is_none());
}

#[test]
fn summary_table_has_params_units_and_per_gpu_throughput() {
    let stats = CellStats::of(&sample_records(), &Slo::default()).expect("stats");
    let row = |c: i64, stats: Option<CellStats>| CellRow {
        cell: format!("concurrency={c},isl=128,osl=9"),
        params: vec![
            ("concurrency".into(), ParamValue::Int(c)),
            ("isl".into(), ParamValue::Int(128)),
            ("osl".into(), ParamValue::Int(9)),
        ],
        status: if stats.is_some() {
            "succeeded"
        } else {
            "failed"
        }
        .into(),
        stats,
    };
    let rows = vec![row(1, Some(stats.clone())), row(2, None)];
    let with_gpus = summary_batch("r1", "e", Some(4), &rows).expect("summary");
    let col = |b: &RecordBatch, name: &str| harness_analytics::table::float_column(b, name);
    assert_eq!(with_gpus.num_rows(), 2);
    assert_eq!(col(&with_gpus, "concurrency"), vec![Some(1.0), Some(2.0)]);
    assert_eq!(col(&with_gpus, "ttft.p99")[0], stats.value("ttft.p99"));
    assert_eq!(
        col(&with_gpus, "ttft.p99")[1],
        None,
        "a failed cell has no statistics"
    );
    assert_eq!(
        col(&with_gpus, "output_token_throughput_per_gpu")[0],
        Some(stats.output_token_throughput / 4.0)
    );
    let unknown = summary_batch("r1", "e", None, &rows).expect("summary");
    assert_eq!(
        col(&unknown, "output_token_throughput_per_gpu")[0],
        None,
        "never assumed"
    );
    let schema = with_gpus.schema();
    let meta = |name: &str, key: &str| {
        schema
            .field_with_name(name)
            .expect(name)
            .metadata()
            .get(key)
            .cloned()
    };
    assert_eq!(meta("itl.p50", "unit").as_deref(), Some("ms"));
    assert_eq!(
        meta("itl.p50", "formula").as_deref(),
        Some("itl.per_request_mean")
    );
    assert_eq!(
        meta("output_sequence_length.p50", "token_source").as_deref(),
        Some("output_token_source")
    );
    assert_eq!(
        meta("request_throughput", "unit").as_deref(),
        Some("requests/s")
    );
    // And through parquet.
    let back = from_parquet(to_parquet(&with_gpus).expect("write")).expect("read");
    assert_eq!(back, with_gpus);
}

#[test]
fn bad_tables_are_errors_that_name_the_column_not_panics() {
    let batch = records_batch(&sample_records()).expect("batch");
    let without = batch.project(&[0, 1, 2]).expect("project");
    let e = CellStats::of_batch(&without, &Slo::default()).expect_err("missing columns");
    assert!(e.to_string().contains("no column"), "{e}");
    let e = records_from_batch(&without).expect_err("missing columns");
    assert!(
        e.to_string().contains("end_ns") || e.to_string().contains("no column"),
        "{e}"
    );
    let e = from_parquet(bytes::Bytes::from_static(b"PAR1 not really parquet")).expect_err("junk");
    assert!(e.to_string().contains("parquet"), "{e}");
    let empty = from_parquet(to_parquet(&records_batch(&[]).expect("empty")).expect("write"))
        .expect("read");
    let stats = CellStats::of_batch(&empty, &Slo::default()).expect("stats of nothing");
    assert_eq!(
        (stats.requests, stats.duration_s, stats.request_throughput),
        (0, 0.0, 0.0)
    );
    assert!(stats.distributions.is_empty());
}

/// Large cells take the two-thread path; it must agree with sorting, statistic by statistic.
#[test]
fn large_cells_agree_with_sorting() {
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let records: Vec<Record> = (0..120_000u64)
        .map(|i| {
            let ttft = 10_000_000 + next() % 40_000_000;
            let tokens = 2 + next() % 30;
            let mut r = Record::succeeded(
                i,
                i * 1000,
                i * 1000 + ttft,
                i * 1000 + ttft + tokens * 9_000_000,
                tokens,
                TokenSource::Usage,
            );
            r.warmup = i % 1000 == 0;
            if i % 997 == 0 {
                r.error = Some(ErrorKind::Timeout);
            }
            r
        })
        .collect();
    let stats = CellStats::of(&records, &Slo::default()).expect("stats");
    let ok: Vec<&Record> = records
        .iter()
        .filter(|r| !r.warmup && r.error.is_none())
        .collect();
    let check = |name: &str, mut values: Vec<f64>| {
        values.sort_unstable_by(f64::total_cmp);
        let d = &stats.distributions[name];
        assert_eq!(d.count, values.len(), "{name}");
        for q in harness_analytics::PERCENTILES {
            let want = harness_analytics::percentile_sorted(&values, f64::from(q));
            assert_eq!(d.p(q), Some(want), "{name} p{q}");
        }
    };
    check(
        "ttft",
        ok.iter()
            .filter_map(|r| r.ttft_s())
            .map(|s| s * 1e3)
            .collect(),
    );
    check(
        "itl",
        ok.iter()
            .filter_map(|r| r.itl_s())
            .map(|s| s * 1e3)
            .collect(),
    );
    check(
        "output_sequence_length",
        ok.iter().map(|r| r.output_tokens as f64).collect(),
    );
    check(
        "inter_chunk_latency",
        ok.iter()
            .flat_map(|r| r.chunk_gaps_ns.iter().map(|g| *g as f64 / 1e6))
            .collect(),
    );
    assert_eq!(
        stats.errors.get("timeout").copied(),
        Some(
            records
                .iter()
                .filter(|r| !r.warmup && r.error.is_some())
                .count() as u64
        )
    );
}
