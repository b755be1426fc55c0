//! The summary table printed after a run.

use std::collections::{BTreeMap, BTreeSet};

use comfy_table::{
    Cell, CellAlignment, ContentArrangement, LineStyle, Table, TableStyle,
    presets::UTF8_FULL_CONDENSED,
};
use harness_core::{CellId, CellStatus, CellSummary, Manifest, RunReport};

/// The most metric columns shown; every metric is in the stored summaries.
const MAX_METRIC_COLUMNS: usize = 13;

/// Benchmark metrics shown first, with short headers, when a cell has them: the report's.
const PREFERRED: [(&str, &str); 10] = harness_analytics::report::TABLE_COLUMNS;

/// Results of the check steps, shown after the benchmark's when a cell has them.
const CHECKS: [(&str, &str); 3] = [
    ("functional.passed", "checks ok"),
    ("functional.failed", "checks failed"),
    ("accuracy", "accuracy"),
];

/// The headline columns of the default table in display order, with the rank that decides
/// which stay when the terminal is too narrow for all (lowest kept first). Units go on the
/// header's second line, so no column is wider than its numbers need.
const HEADLINE: [(&str, &str, u8); 13] = [
    ("requests", "requests", 6),
    ("errors", "errors", 5),
    ("request_throughput", "req/s", 0),
    ("output_token_throughput", "out tok/s", 1),
    ("ttft.p50", "TTFT p50\nms", 4),
    ("ttft.p99", "TTFT p99\nms", 2),
    ("itl.p50", "ITL p50\nms", 7),
    ("itl.p99", "ITL p99\nms", 3),
    ("functional.passed", "checks ok", 8),
    ("functional.failed", "checks failed", 9),
    ("accuracy", "accuracy", 10),
    ("prefix_cache_hit_rate", "prefix\ncache hits", 11),
    ("ttft_later_turns.p50", "TTFT turn 2+\np50 ms", 12),
];

/// The cell's wall time, shown last and dropped first.
const TIME: (&str, u8) = ("time (s)", 13);

/// Spaces between two columns of the default table.
const GAP: usize = 2;

/// The default table's look: a rule under the header, columns apart by [`GAP`] spaces.
const COMPACT: TableStyle = TableStyle::new().header_separator(LineStyle::none().fill('─'));

/// The default table: cell, status and the headline metrics that fit in `width` columns
/// (all of them when `width` is `None`, as when stdout is not a terminal), never wrapped
/// or cut; and below it, one line per failed cell with its error. `--wide` gives
/// [`summary_table`] instead.
pub(crate) fn headline_table(
    rows: &[Row<'_>],
    summaries: &[CellSummary],
    width: Option<usize>,
) -> String {
    let by_id: BTreeMap<_, _> = summaries.iter().map(|s| (&s.cell, s)).collect();
    // A metric's text per row, or nothing when no cell has it.
    let column = |metric: &str| -> Option<Vec<String>> {
        let values: Vec<Option<String>> = rows
            .iter()
            .map(|r| {
                by_id
                    .get(r.cell)
                    .and_then(|s| s.metrics.get(metric))
                    .map(|v| format_metric(*v))
            })
            .collect();
        values
            .iter()
            .any(Option::is_some)
            .then(|| values.into_iter().map(Option::unwrap_or_default).collect())
    };
    // Candidate columns: header, per-row text, rank.
    let mut columns: Vec<(String, Vec<String>, u8)> = HEADLINE
        .iter()
        .filter_map(|(metric, header, rank)| Some(((*header).to_owned(), column(metric)?, *rank)))
        .collect();
    // A pipeline without the load generator (checks of its own): its metrics instead.
    if columns.is_empty() {
        let present: BTreeSet<&String> = summaries.iter().flat_map(|s| s.metrics.keys()).collect();
        for (i, metric) in present.into_iter().enumerate() {
            let rank = u8::try_from(12 + i).unwrap_or(u8::MAX);
            if let Some(values) = column(metric) {
                columns.push((metric.clone(), values, rank));
            }
        }
    }
    let times: Vec<String> = rows
        .iter()
        .map(|r| {
            by_id
                .get(r.cell)
                .map_or(String::new(), |s| format!("{:.2}", s.duration_s))
        })
        .collect();
    if times.iter().any(|t| !t.is_empty()) {
        columns.push((TIME.0.to_owned(), times, TIME.1));
    }
    let ids: Vec<String> = rows.iter().map(|r| r.cell.to_string()).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| status_text(r.status)).collect();
    let render = |keep: &[bool]| -> String {
        let mut table = Table::new();
        table
            .load_style(COMPACT)
            .set_content_arrangement(ContentArrangement::Disabled);
        let kept = || {
            columns
                .iter()
                .zip(keep)
                .filter(|(_, k)| **k)
                .map(|(c, _)| c)
        };
        let mut header = vec![Cell::new("cell"), Cell::new("status")];
        header.extend(kept().map(|c| Cell::new(&c.0).set_alignment(CellAlignment::Right)));
        table.set_header(header);
        for (row, (id, status)) in ids.iter().zip(&statuses).enumerate() {
            let mut cells = vec![Cell::new(id), Cell::new(status)];
            cells.extend(kept().map(|c| Cell::new(&c.1[row]).set_alignment(CellAlignment::Right)));
            table.add_row(cells);
        }
        // GAP spaces after each column but the last.
        let last = table.column_count().saturating_sub(1);
        for (i, column) in table.column_iter_mut().enumerate() {
            column.set_padding((0, if i == last { 0 } else { GAP as u16 }));
        }
        table
            .lines()
            .map(|l| l.trim_end().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let fits = |text: &str| width.is_none_or(|w| text.lines().all(|l| l.chars().count() <= w));
    // Keep columns by rank while the table still fits.
    let mut order: Vec<usize> = (0..columns.len()).collect();
    order.sort_by_key(|&i| columns[i].2);
    let mut keep = vec![false; columns.len()];
    let mut out = render(&keep);
    for i in order {
        keep[i] = true;
        let wider = render(&keep);
        if fits(&wider) {
            out = wider;
        } else {
            keep[i] = false;
        }
    }
    let hidden = keep.iter().filter(|k| !**k).count();
    if hidden > 0 {
        let plural = if hidden == 1 { "" } else { "s" };
        out.push_str(&format!(
            "\n({hidden} more column{plural} with --wide; every metric in `harness show RUN --json`)"
        ));
    }
    for r in rows.iter().filter(|r| r.error.is_some()) {
        out.push_str(&format!(
            "\n{}: {} after {} attempt{}: {}",
            r.cell,
            status_text(r.status),
            r.attempts,
            if r.attempts == 1 { "" } else { "s" },
            short(r.error.unwrap_or_default(), 300)
        ));
    }
    out
}

/// The table a run ends with and `harness show` prints: [`headline_table`] fitted to the
/// terminal, or every column with `wide`.
pub(crate) fn cells_table(rows: &[Row<'_>], summaries: &[CellSummary], wide: bool) -> String {
    if wide {
        summary_table(rows, summaries).to_string()
    } else {
        headline_table(rows, summaries, terminal_width())
    }
}

/// The width to fit the default table in: the terminal's when stdout is one.
fn terminal_width() -> Option<usize> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    Table::new().width().map(usize::from)
}

fn status_text(s: CellStatus) -> &'static str {
    match s {
        CellStatus::Pending => "not run",
        CellStatus::Running => "interrupted",
        CellStatus::Succeeded => "ok",
        CellStatus::Failed => "FAILED",
        CellStatus::Cancelled => "cancelled",
        CellStatus::Skipped => "skipped",
        _ => "?",
    }
}

fn short(s: &str, n: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > n {
        format!("{}…", line.chars().take(n).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// What the table shows of a cell besides its metrics.
#[derive(Debug)]
pub(crate) struct Row<'a> {
    pub(crate) cell: &'a CellId,
    pub(crate) status: CellStatus,
    pub(crate) attempts: u32,
    pub(crate) error: Option<&'a str>,
}

/// The rows of a run session's report.
/// The rows of a run's report; candidates an SLO search skipped are left out.
pub(crate) fn report_rows(report: &RunReport) -> Vec<Row<'_>> {
    report
        .cells
        .iter()
        .filter(|c| c.status != CellStatus::Skipped)
        .map(|c| Row {
            cell: &c.cell,
            status: c.status,
            attempts: c.attempts,
            error: c.error.as_ref().map(|e| e.message.as_str()),
        })
        .collect()
}

/// The rows of a stored run: its plan, with each cell's stored summary when it has one.
pub(crate) fn stored_rows<'a>(
    manifest: &'a Manifest,
    summaries: &'a [CellSummary],
) -> Vec<Row<'a>> {
    let by_id: BTreeMap<_, _> = summaries.iter().map(|s| (&s.cell, s)).collect();
    manifest
        .plan
        .iter()
        .map(|cell| match by_id.get(cell) {
            Some(s) => Row {
                cell,
                status: s.status,
                attempts: s.attempts,
                error: s.error.as_ref().map(|e| e.message.as_str()),
            },
            None => Row {
                cell,
                status: manifest
                    .cell_status
                    .get(cell)
                    .copied()
                    .unwrap_or(CellStatus::Pending),
                attempts: 0,
                error: None,
            },
        })
        .filter(|r| r.status != CellStatus::Skipped)
        .collect()
}

/// One row per cell: status, attempts, duration, metrics, error.
pub(crate) fn summary_table(rows: &[Row<'_>], summaries: &[CellSummary]) -> Table {
    let by_id: BTreeMap<_, _> = summaries.iter().map(|s| (&s.cell, s)).collect();
    let present: BTreeSet<&String> = summaries.iter().flat_map(|s| s.metrics.keys()).collect();
    let preferred: Vec<(String, String)> = PREFERRED
        .iter()
        .chain(CHECKS.iter())
        .filter(|(k, _)| present.iter().any(|p| p.as_str() == *k))
        .map(|(k, h)| ((*k).to_owned(), (*h).to_owned()))
        .collect();
    let metrics: Vec<(String, String)> = if preferred.is_empty() {
        present
            .iter()
            .take(MAX_METRIC_COLUMNS)
            .map(|k| ((*k).clone(), (*k).clone()))
            .collect()
    } else {
        preferred
    };
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    let mut header = vec![
        "cell".to_owned(),
        "status".into(),
        "attempts".into(),
        "time (s)".into(),
    ];
    header.extend(metrics.iter().map(|(_, h)| h.clone()));
    header.push("error".into());
    table.set_header(header);
    for rep in rows {
        let summary = by_id.get(rep.cell);
        let mut row = vec![
            Cell::new(rep.cell),
            Cell::new(status_text(rep.status)),
            Cell::new(rep.attempts),
            Cell::new(summary.map_or(String::new(), |s| format!("{:.2}", s.duration_s))),
        ];
        for (m, _) in &metrics {
            let v = summary.and_then(|s| s.metrics.get(m));
            row.push(Cell::new(v.map_or(String::new(), |v| format_metric(*v))));
        }
        row.push(Cell::new(rep.error.map_or(String::new(), |e| short(e, 80))));
        table.add_row(row);
    }
    table
}

fn format_metric(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The SLO searches of a run: per treatment and ISL/OSL, the best passing value of the axis,
/// the first failing one, and the probes it took.
pub(crate) fn search_table(outcomes: &[harness_core::search::SearchOutcome]) -> String {
    use harness_core::search::Verdict;
    let mut t = comfy_table::Table::new();
    t.load_style(COMPACT)
        .set_content_arrangement(ContentArrangement::Disabled);
    let treatments = outcomes.iter().any(|o| o.treatment.is_some());
    let mut header = Vec::new();
    if treatments {
        header.push("treatment");
    }
    header.extend([
        "series",
        "searched",
        "best passing",
        "first failing",
        "probes",
        "note",
    ]);
    t.set_header(header);
    let num = |v: Option<f64>| {
        v.map_or_else(
            || "-".to_owned(),
            harness_core::config::values::format_number,
        )
    };
    for o in outcomes {
        let mut row = Vec::new();
        if treatments {
            row.push(o.treatment.clone().unwrap_or_default());
        }
        let trail: Vec<String> = o
            .probes
            .iter()
            .map(|p| {
                let mark = if matches!(p.verdict, Verdict::Pass) {
                    "ok"
                } else {
                    "x"
                };
                let again = if p.repeat > 1 { " again" } else { "" };
                format!(
                    "{}{again} {mark}",
                    harness_core::config::values::format_number(p.value)
                )
            })
            .collect();
        let note = match (&o.error, o.converged, o.best) {
            (Some(e), _, _) => format!("stopped: {e}"),
            (None, false, _) => "probe budget spent before the precision was reached".to_owned(),
            (None, true, None) => "the SLO does not hold even at the lowest value".to_owned(),
            (None, true, Some(_)) => String::new(),
        };
        row.extend([
            o.group.clone(),
            serde_json::to_value(o.axis)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            num(o.best),
            num(o.first_fail),
            trail.join(", "),
            note,
        ]);
        t.add_row(row);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quickstart's six cells, one failed, with the numbers of a real run.
    fn cells() -> (Vec<CellId>, Vec<CellSummary>) {
        let mut ids = Vec::new();
        let mut summaries = Vec::new();
        let rows = [
            (
                "concurrency=1,isl=128,osl=32",
                12.092,
                387.0,
                20.576,
                20.857,
            ),
            (
                "concurrency=4,isl=128,osl=32",
                48.271,
                1544.7,
                20.393,
                21.358,
            ),
            (
                "concurrency=16,isl=128,osl=32",
                188.1,
                6020.1,
                21.147,
                23.346,
            ),
            ("concurrency=1,isl=512,osl=64", 6.808, 435.7, 20.646, 21.064),
            (
                "concurrency=4,isl=512,osl=64",
                27.185,
                1739.9,
                20.431,
                21.142,
            ),
            (
                "concurrency=16,isl=512,osl=64",
                107.1,
                6857.5,
                21.073,
                23.802,
            ),
        ];
        for (i, (id, rps, tps, p50, p99)) in rows.into_iter().enumerate() {
            let failed = i == 5;
            let v = serde_json::json!({
                "format": 1,
                "cell": id,
                "params": [],
                "status": if failed { "failed" } else { "succeeded" },
                "attempts": if failed { 2 } else { 1 },
                "duration_s": 3.97,
                "metrics": if failed { serde_json::json!({}) } else { serde_json::json!({
                    "requests": 48.0, "errors": 0.0, "request_throughput": rps,
                    "output_token_throughput": tps, "ttft.p50": p50, "ttft.p99": p99,
                    "itl.p50": 1.996, "itl.p99": 2.019, "request_latency.p50": 82.3,
                    "output_token_throughput_per_user.p50": 501.0,
                })},
                "notes": [],
                "steps": [],
                "error": if failed {
                    serde_json::json!({"step": "benchmark", "kind": "failed",
                        "message": "benchmark: all 48 requests failed ({\"connect\": 48}); first: connect to 127.0.0.1:8000: Connection refused (os error 111)"})
                } else { serde_json::Value::Null },
            });
            summaries.push(serde_json::from_value::<CellSummary>(v).expect("summary"));
            ids.push(CellId::new(id).expect("id"));
        }
        (ids, summaries)
    }

    /// Compares with `tests/snapshots/<name>`; `HARNESS_UPDATE_SNAPSHOTS=1` rewrites it.
    fn snapshot(name: &str, text: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(name);
        if std::env::var_os("HARNESS_UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, text).expect("write snapshot");
        }
        let want = std::fs::read_to_string(&path).expect("snapshot");
        assert_eq!(text, want, "{name} changed");
    }

    #[test]
    fn the_default_table_fits_80_and_120_columns_without_cutting_anything() {
        let (ids, summaries) = cells();
        let rows: Vec<Row<'_>> = ids
            .iter()
            .zip(&summaries)
            .map(|(id, s)| Row {
                cell: id,
                status: s.status,
                attempts: s.attempts,
                error: s.error.as_ref().map(|e| e.message.as_str()),
            })
            .collect();
        for width in [80, 120] {
            let text = headline_table(&rows, &summaries, Some(width));
            // The table, then a hint and the errors, which wrap as prose.
            let end = text
                .find("\n(")
                .or_else(|| text.find("\nconcurrency=16,isl=512,osl=64: "))
                .unwrap_or(text.len());
            let (table, below) = text.split_at(end);
            for line in table.lines() {
                assert!(line.chars().count() <= width, "{width}: `{line}`");
            }
            // Every cell id and every number whole, on one line each.
            for (id, s) in ids.iter().zip(&summaries) {
                let line = table
                    .lines()
                    .find(|l| l.starts_with(id.as_str()))
                    .unwrap_or_else(|| panic!("{width}: no line for {id}"));
                if let Some(v) = s.metrics.get("ttft.p99") {
                    assert!(line.contains(&format_metric(*v)), "{width}: `{line}`");
                }
            }
            assert!(below.contains("concurrency=16,isl=512,osl=64: FAILED after 2 attempts"));
            snapshot(&format!("summary-table-{width}.txt"), &text);
        }
        // Unbounded (not a terminal): every headline column.
        let all = headline_table(&rows, &summaries, None);
        for h in [
            "requests",
            "errors",
            "req/s",
            "out tok/s",
            "TTFT p50",
            "ITL p50",
        ] {
            assert!(all.contains(h), "{all}");
        }
    }
}
