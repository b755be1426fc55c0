use super::*;

const S: i64 = 1_000_000_000;

/// A vLLM-like exposition at one moment: `done` requests finished, `tokens` generated,
/// `running` in flight on each of two engines, and a TTFT histogram of `fast` requests
/// under 0.1 s and `slow` between 0.1 s and 0.5 s.
fn vllm(done: u64, tokens: u64, running: [u32; 2], fast: u64, slow: u64) -> Exposition {
    let text = format!(
        "# TYPE vllm:request_success_total counter\n\
         vllm:request_success_total{{finished_reason=\"length\",model_name=\"m\"}} {done}\n\
         # TYPE vllm:generation_tokens_total counter\n\
         vllm:generation_tokens_total{{model_name=\"m\"}} {tokens}\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{engine=\"0\"}} {}\n\
         vllm:num_requests_running{{engine=\"1\"}} {}\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{engine=\"0\"}} 0.{}\n\
         # TYPE vllm:time_to_first_token_seconds histogram\n\
         vllm:time_to_first_token_seconds_bucket{{le=\"0.1\"}} {fast}\n\
         vllm:time_to_first_token_seconds_bucket{{le=\"0.5\"}} {}\n\
         vllm:time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {}\n\
         vllm:time_to_first_token_seconds_sum {}\n\
         vllm:time_to_first_token_seconds_count {}\n",
        running[0],
        running[1],
        running[0] + running[1],
        fast + slow,
        fast + slow,
        fast as f64 * 0.05 + slow as f64 * 0.3,
        fast + slow,
    );
    expo::parse(&text)
}

/// Scrapes before the load, three in the window, one after.
fn log() -> ScrapeLog {
    let mut t = TargetLog::new("endpoint", "http://127.0.0.1:1/metrics");
    t.record(-S / 10, vllm(5, 50, [0, 0], 0, 0));
    t.record(S / 2, vllm(9, 90, [2, 1], 4, 0));
    t.gap(S, "connection refused");
    t.record(3 * S / 2, vllm(15, 150, [3, 3], 4, 6));
    t.record(5 * S / 2, vllm(20, 200, [0, 0], 4, 6));
    ScrapeLog {
        interval: Duration::from_millis(500),
        targets: vec![t],
    }
}

fn window() -> Window {
    Window {
        start_ns: S / 5,
        end_ns: 2 * S,
    }
}

fn client(requests: u64, tokens: u64) -> ClientCounts {
    ClientCounts {
        requests,
        prompt_tokens: 0,
        output_tokens: tokens,
        end_ns: 2 * S + S / 10,
    }
}

#[test]
fn the_window_keeps_its_scrapes_and_counters_become_rates() {
    let (summary, batch) = summarise(&log(), window(), &client(15, 150), 0.01).expect("summary");
    // Scrapes at 0.5 s and 1.5 s are in the window; the gap at 1 s is not a row.
    let time = batch
        .column_by_name("time_s")
        .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
        .expect("time_s");
    let times: HashSet<u64> = time.values().iter().map(|t| (t * 10.0) as u64).collect();
    assert_eq!(times, HashSet::from([5, 15]));
    let s = &summary.server;
    // Running: 3 then 6, summed over the engines.
    assert_eq!(s["running.mean"], 4.5);
    assert_eq!(s["running.max"], 6.0);
    // KV cache: 0.3, then 0.6.
    assert!((s["kv_cache_usage.max"] - 0.6).abs() < 1e-12);
    // Requests: +4 over 0.6 s, +6 over 1 s (across the gap), and +5 over the second up to
    // the first scrape after the window, which holds the window's last completions.
    assert!((s["requests_per_s"] - 15.0 / 2.6).abs() < 1e-9, "{s:?}");
    assert!((s["generation_tokens_per_s"] - 150.0 / 2.6).abs() < 1e-9);
    // TTFT: 4 under 100 ms, 6 between 100 and 500 ms.
    assert!(
        (s["ttft.p50"] - (100.0 + 400.0 * (5.0 - 4.0) / 6.0)).abs() < 1e-9,
        "{s:?}"
    );
    assert!((s["ttft.mean"] - (4.0 * 50.0 + 6.0 * 300.0) / 10.0).abs() < 1e-9);
    let t = &summary.targets[0];
    assert_eq!((t.scrapes, t.failed, t.in_window), (5, 1, 2));
    assert_eq!(t.first_failure.as_deref(), Some("connection refused"));
    assert_eq!(t.quantities["requests"], ["vllm:request_success_total"]);
    // The cell's whole run: 15 requests and 150 tokens from the first scrape to the last.
    let checks: Vec<(&str, f64, bool)> = summary
        .cross_checks
        .iter()
        .map(|c| (c.quantity.as_str(), c.server, c.agrees))
        .collect();
    assert_eq!(
        checks,
        [("requests", 15.0, true), ("generation_tokens", 150.0, true)]
    );
    assert_eq!(
        summary.notes().len(),
        1,
        "only the gap: {:?}",
        summary.notes()
    );
    assert_eq!(
        batch
            .schema()
            .metadata()
            .get("harness.window_end_s")
            .map(String::as_str),
        Some("2")
    );
}

#[test]
fn a_disagreeing_counter_is_a_note_and_no_baseline_means_no_check() {
    let (summary, _) = summarise(&log(), window(), &client(12, 150), 0.01).expect("summary");
    let notes = summary.notes();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("counted 15 requests over the cell where the client counted 12")),
        "{notes:?}"
    );
    // Within the tolerance it agrees.
    let (summary, _) = summarise(&log(), window(), &client(14, 150), 0.1).expect("summary");
    assert!(summary.cross_checks.iter().all(|c| c.agrees));
    // A window shorter than the interval, which no scrape fell in, has no server metrics.
    let short = Window {
        start_ns: 6 * S / 10,
        end_ns: 9 * S / 10,
    };
    let (summary, _) = summarise(&log(), short, &client(15, 150), 0.01).expect("summary");
    assert!(summary.server.is_empty(), "{:?}", summary.server);
    assert_eq!(summary.targets[0].in_window, 0);
    // Without a scrape before the first request there is nothing to check against.
    let mut late = log();
    late.targets[0].scrapes.remove(0);
    let (summary, _) = summarise(&late, window(), &client(12, 150), 0.01).expect("summary");
    assert!(summary.cross_checks.is_empty());
}

#[test]
fn a_counter_reset_counts_from_zero() {
    let mut t = TargetLog::new("t", "u");
    let c = |v: u64| {
        expo::parse(&format!(
            "# TYPE mock_completed_total counter\nmock_completed_total {v}\n"
        ))
    };
    t.record(-1, c(100));
    t.record(S, c(110));
    t.record(2 * S, c(4)); // restarted: 4 since
    t.record(3 * S, c(9));
    let log = ScrapeLog {
        interval: Duration::from_secs(1),
        targets: vec![t],
    };
    let (summary, _) = summarise(
        &log,
        Window {
            start_ns: 0,
            end_ns: 3 * S,
        },
        &client(19, 0),
        0.0,
    )
    .expect("summary");
    assert_eq!(summary.cross_checks[0].server, 19.0);
    assert!(summary.cross_checks[0].agrees);
    assert!((summary.server["requests_per_s"] - 19.0 / 3.0).abs() < 1e-6);
}

#[test]
fn the_stored_table_gives_back_the_server_series() {
    let (_, batch) = summarise(&log(), window(), &client(15, 150), 0.01).expect("summary");
    let bytes = crate::io::to_parquet(&batch).expect("parquet");
    let back = crate::io::from_parquet(bytes).expect("read");
    let series = server_timeline(&back).expect("timeline");
    let get = |name: &str| {
        series
            .iter()
            .find(|s| s.quantity == name)
            .map(|s| s.points.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("running"), [(0.5, 3.0), (1.5, 6.0)]);
    assert_eq!(get("requests"), [(0.5, 4.0 / 0.6), (1.5, 6.0)]);
    assert!(get("ttft").is_empty(), "histograms are not series");
}

#[test]
fn histogram_quantiles_follow_prometheus() {
    let b = [(0.1, 4.0), (0.5, 10.0), (f64::INFINITY, 10.0)];
    assert_eq!(histogram_quantile(0.2, &b), Some(0.05));
    assert_eq!(histogram_quantile(1.0, &b), Some(0.5));
    // Ranks in the +Inf bucket answer the highest finite bound.
    let c = [(0.1, 4.0), (f64::INFINITY, 10.0)];
    assert_eq!(histogram_quantile(0.99, &c), Some(0.1));
    assert_eq!(
        histogram_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]),
        None
    );
}

#[test]
fn llama_cpp_prompt_tokens_add_the_cached_ones() {
    let text = |processed: u64, cached: u64| {
        expo::parse(&format!(
            "# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total {processed}\n\
             # TYPE llamacpp:prompt_tokens_cached_total counter\nllamacpp:prompt_tokens_cached_total {cached}\n"
        ))
    };
    let mut t = TargetLog::new("endpoint", "u");
    t.record(-1, text(10, 0));
    t.record(S, text(100, 60));
    let log = ScrapeLog {
        interval: Duration::from_secs(1),
        targets: vec![t],
    };
    let counts = ClientCounts {
        prompt_tokens: 150,
        end_ns: S,
        ..Default::default()
    };
    let (summary, _) = summarise(
        &log,
        Window {
            start_ns: 0,
            end_ns: S,
        },
        &counts,
        0.0,
    )
    .expect("summary");
    assert_eq!(summary.cross_checks[0].quantity, "prompt_tokens");
    assert_eq!(summary.cross_checks[0].server, 150.0);
    assert!(summary.cross_checks[0].agrees);
    assert!((summary.server["prefix_cache_hit_rate.mean"] - 60.0 / 150.0).abs() < 1e-12);
}

#[test]
fn series_past_the_limit_are_dropped_with_a_warning() {
    let mut text = String::from("# TYPE g gauge\n");
    for i in 0..MAX_SERIES + 5 {
        text.push_str(&format!("g{{i=\"{i}\"}} 1\n"));
    }
    let mut t = TargetLog::new("big", "http://x/metrics");
    t.record(0, expo::parse(&text));
    assert_eq!(t.series().len(), MAX_SERIES);
    assert!(
        t.warnings()[0].contains("more than 20000 series"),
        "{:?}",
        t.warnings()
    );
}
