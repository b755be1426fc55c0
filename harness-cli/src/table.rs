//! The summary table printed after a run.

use std::collections::{BTreeMap, BTreeSet};

use comfy_table::{Cell, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use harness_core::{CellStatus, CellSummary, Plan, RunReport};

/// The most metric columns shown; `harness show` (later) prints all.
const MAX_METRIC_COLUMNS: usize = 8;

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

/// One row per cell of the plan: status, attempts, duration, metrics, error.
pub(crate) fn summary_table(plan: &Plan, report: &RunReport, summaries: &[CellSummary]) -> Table {
    let by_id: BTreeMap<_, _> = summaries.iter().map(|s| (&s.cell, s)).collect();
    let metrics: Vec<String> = summaries
        .iter()
        .flat_map(|s| s.metrics.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(MAX_METRIC_COLUMNS)
        .collect();
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
    header.extend(metrics.iter().cloned());
    header.push("error".into());
    table.set_header(header);
    for (cell, rep) in plan.cells().iter().zip(&report.cells) {
        let summary = by_id.get(&cell.id);
        let mut row = vec![
            Cell::new(&cell.id),
            Cell::new(status_text(rep.status)),
            Cell::new(rep.attempts),
            Cell::new(summary.map_or(String::new(), |s| format!("{:.2}", s.duration_s))),
        ];
        for m in &metrics {
            let v = summary.and_then(|s| s.metrics.get(m));
            row.push(Cell::new(v.map_or(String::new(), |v| format_metric(*v))));
        }
        row.push(Cell::new(
            rep.error
                .as_ref()
                .map_or(String::new(), |e| short(&e.message, 80)),
        ));
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
