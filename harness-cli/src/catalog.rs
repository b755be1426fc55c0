//! `harness ls`, `harness show` and `harness push`.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use harness_core::{ArtifactStore, ArtifactStoreExt, CellStatus, CellSummary, Error};
use harness_storage::catalog::{self, RunInfo};

use crate::table;

fn status_word(s: harness_core::RunStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn duration_text(info: &RunInfo) -> String {
    info.duration_s()
        .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"))
}

/// `harness ls`.
pub(crate) async fn ls(
    store: &dyn ArtifactStore,
    experiment: Option<&str>,
    json: bool,
) -> Result<(), Error> {
    let runs = catalog::list_runs(store, experiment).await?;
    if json {
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "run_id": r.run_id(),
                    "experiment": r.manifest.experiment_name,
                    "created_at": r.manifest.created_at,
                    "status": r.status(),
                    "cells": r.manifest.plan.len(),
                    "succeeded": r.succeeded(),
                    "failed": r.count(CellStatus::Failed),
                    "duration_s": r.duration_s(),
                    "reproduces": r.manifest.provenance.reproduces,
                })
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(());
    }
    if runs.is_empty() {
        say!("no runs in {}", store.describe());
        return Ok(());
    }
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "run",
            "experiment",
            "created",
            "status",
            "cells ok/failed/all",
            "duration",
        ]);
    for r in &runs {
        t.add_row([
            r.run_id().to_owned(),
            r.manifest.experiment_name.clone(),
            r.manifest.created_at.clone(),
            status_word(r.status()),
            format!(
                "{}/{}/{}",
                r.succeeded(),
                r.count(CellStatus::Failed),
                r.manifest.plan.len()
            ),
            duration_text(r),
        ]);
    }
    say!("{t}");
    say!("{} runs in {}", runs.len(), store.describe());
    Ok(())
}

/// The stored cell summaries of a run (the run summary, or each cell's when it is missing).
async fn summaries(store: &dyn ArtifactStore, info: &RunInfo) -> Result<Vec<CellSummary>, Error> {
    match store
        .get_json::<Vec<CellSummary>>(&info.layout.summary())
        .await
    {
        Ok(s) => Ok(s),
        Err(Error::NotFound { .. }) => {
            let mut out = Vec::new();
            for cell in &info.manifest.plan {
                match store.get_json(&info.layout.cell_summary(cell)).await {
                    Ok(s) => out.push(s),
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

/// `harness show`.
pub(crate) async fn show(store: &dyn ArtifactStore, run: &str, json: bool) -> Result<(), Error> {
    let info = catalog::find_run(store, run).await?;
    let cells = summaries(store, &info).await?;
    if json {
        let out = serde_json::json!({ "manifest": info.manifest, "cells": cells });
        say!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    let m = &info.manifest;
    say!("run         {}", m.run_id);
    say!("experiment  {}", m.experiment_name);
    say!("status      {}", status_word(m.status));
    say!("created     {}", m.created_at);
    say!(
        "duration    {} over {} session(s)",
        duration_text(&info),
        m.sessions.len()
    );
    say!("harness     {}", m.harness_version);
    let host = &m.host;
    say!(
        "host        {} ({}; {} CPUs{}{})",
        host.hostname,
        host.os,
        host.cpus,
        host.cpu_model
            .as_ref()
            .map(|c| format!(", {c}"))
            .unwrap_or_default(),
        host.memory_bytes
            .map(|b| format!(", {:.1} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_default()
    );
    if let Some(f) = &m.provenance.experiment_file {
        say!("file        {f}");
    }
    if let Some(g) = &m.provenance.git {
        say!(
            "git         {}{}",
            g.commit,
            if g.dirty { " (modified)" } else { "" }
        );
    }
    if let Some(r) = &m.provenance.reproduces {
        say!("reproduces  {r}");
    }
    say!("stored at   {}/{}", store.describe(), info.layout.root());
    say!(
        "{}",
        table::summary_table(&table::stored_rows(m, &cells), &cells)
    );
    Ok(())
}

/// `harness push`.
pub(crate) async fn push(
    from: &dyn ArtifactStore,
    to: &dyn ArtifactStore,
    run: &str,
) -> Result<(), Error> {
    let report = catalog::copy_run(from, to, run).await?;
    say!(
        "pushed run {run} from {} to {}: {} objects copied ({} bytes), {} already there; all verified",
        from.describe(),
        to.describe(),
        report.copied,
        report.bytes,
        report.unchanged
    );
    Ok(())
}
