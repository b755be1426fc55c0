//! The summary table printed after a run.

use std::collections::{BTreeMap, BTreeSet};

use comfy_table::{Cell, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
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

fn status_text(s: CellStatus) -> &'static str {
    match s {
        CellStatus::Pending => "not run",
        CellStatus::Running => "interrupted",
        CellStatus::Succeeded => "ok",
        CellStatus::Failed => "FAILED",
        CellStatus::Cancelled => "cancelled",
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
pub(crate) fn report_rows(report: &RunReport) -> Vec<Row<'_>> {
    report
        .cells
        .iter()
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
