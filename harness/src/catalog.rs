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

/// `harness ls`; `spool` is the local spool of a remote store, whose runs waiting for upload
/// are marked.
pub(crate) async fn ls(
    store: &dyn ArtifactStore,
    spool: Option<&dyn ArtifactStore>,
    experiment: Option<&str>,
    json: bool,
) -> Result<(), Error> {
    let runs = catalog::list_runs(store, experiment).await?;
    let mut spooled = Vec::with_capacity(runs.len());
    for r in &runs {
        spooled.push(match spool {
            Some(s) => s.list(r.layout.root()).await?.len(),
            None => 0,
        });
    }
    if json {
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .zip(&spooled)
            .map(|(r, spooled)| {
                serde_json::json!({
                    "run_id": r.run_id(),
                    "experiment": r.manifest.experiment_name,
                    "created_at": r.manifest.created_at,
                    "status": r.status(),
                    "cells": r.manifest.plan.len() - r.count(CellStatus::Skipped),
                    "succeeded": r.succeeded(),
                    "failed": r.count(CellStatus::Failed),
                    "duration_s": r.duration_s(),
                    "reproduces": r.manifest.provenance.reproduces,
                    "spooled_objects": spooled,
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
    for (r, spooled) in runs.iter().zip(&spooled) {
        let waiting = if *spooled > 0 {
            format!(" ({spooled} objects in the spool)")
        } else {
            String::new()
        };
        t.add_row([
            r.run_id().to_owned(),
            r.manifest.experiment_name.clone(),
            r.manifest.created_at.clone(),
            format!("{}{waiting}", status_word(r.status())),
            format!(
                "{}/{}/{}",
                r.succeeded(),
                r.count(CellStatus::Failed),
                // Candidates an SLO search did not need are not cells of the results.
                r.manifest.plan.len() - r.count(CellStatus::Skipped)
            ),
            duration_text(r),
        ]);
    }
    say!("{t}");
    say!("{} runs in {}", runs.len(), store.describe());
    let waiting = spooled.iter().filter(|n| **n > 0).count();
    if let Some(spool) = spool.filter(|_| waiting > 0) {
        say!(
            "{waiting} runs have objects waiting in the spool; upload them with: harness push RUN --store {} --to {}",
            spool.describe(),
            store.describe()
        );
    }
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
pub(crate) async fn show(
    store: &dyn ArtifactStore,
    run: &str,
    json: bool,
    wide: bool,
) -> Result<(), Error> {
    let info = catalog::find_run(store, run).await?;
    let cells = summaries(store, &info).await?;
    let search: Vec<harness_core::search::SearchOutcome> =
        match store.get_json(&info.layout.search()).await {
            Ok(s) => s,
            Err(Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
    if json {
        let mut out = serde_json::json!({ "manifest": info.manifest, "cells": cells });
        if !search.is_empty() {
            out["search"] = serde_json::to_value(&search).unwrap_or_default();
        }
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
    let rows = table::stored_rows(m, &cells);
    say!("{}", table::cells_table(&rows, &cells, wide));
    if !search.is_empty() {
        say!("{}", table::search_table(&search));
    }
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

/// Where a key of a `file://` store lives on disk, for printing.
pub(crate) fn local_path(store: &dyn ArtifactStore, key: &harness_core::ArtifactKey) -> String {
    match store.describe().strip_prefix("file://") {
        Some(root) => format!("{root}/{key}"),
        None => format!("{}/{key}", store.describe()),
    }
}

/// `harness report`.
pub(crate) async fn report(store: &dyn ArtifactStore, run: &str) -> Result<(), Error> {
    let info = catalog::find_run(store, run).await?;
    let written = harness_analytics::report::write_report(store, info.layout.clone()).await?;
    for w in &written.warnings {
        eprintln!("warning: {w}");
    }
    say!(
        "report of run {}: {} files; open {}",
        info.run_id(),
        written.files,
        local_path(store, &written.index)
    );
    say!(
        "summary table: {}",
        local_path(store, &info.layout.summary_table())
    );
    Ok(())
}

/// The arguments of `harness compare`.
#[derive(Debug)]
pub(crate) struct CompareArgs {
    pub(crate) runs: Vec<String>,
    pub(crate) metrics: Vec<String>,
    pub(crate) gates: Vec<String>,
    pub(crate) out: Option<std::path::PathBuf>,
    pub(crate) json: bool,
}

fn sig_mark(s: Option<bool>) -> &'static str {
    match s {
        Some(true) => "yes",
        Some(false) => "no",
        None => "n/a",
    }
}

/// `harness compare`: exit 1 when a gate trips.
pub(crate) async fn compare(
    store: &dyn ArtifactStore,
    args: &CompareArgs,
) -> Result<std::process::ExitCode, Error> {
    use harness_analytics::compare::{self, Gate};
    use harness_analytics::report::{RunData, format_value};
    let gates = args
        .gates
        .iter()
        .map(|g| g.parse::<Gate>().map_err(Error::from))
        .collect::<Result<Vec<_>, _>>()?;
    for m in &args.metrics {
        if harness_analytics::schema::unit_of(m).is_none() {
            return Err(Error::invalid(format!("--metric {m}"), "unknown metric"));
        }
    }
    let metrics: Vec<String> = if args.metrics.is_empty() {
        compare::DEFAULT_METRICS
            .iter()
            .map(|m| (*m).to_owned())
            .collect()
    } else {
        args.metrics.clone()
    };
    let mut runs = Vec::new();
    for r in &args.runs {
        // `RUN@TREATMENT`: one treatment's cells, matched by the rest of their ids.
        let (run, treatment) = match r.rsplit_once('@') {
            Some((run, t)) => (run, Some(t)),
            None => (r.as_str(), None),
        };
        let info = catalog::find_run(store, run).await?;
        let data = RunData::load(store, info.layout).await?;
        let samples = compare::load_samples(store, &data).await?;
        runs.push(match treatment {
            Some(t) => data.treatment_only(t, samples)?,
            None => (data, samples),
        });
    }
    let result = compare::compare(&runs, &metrics, &gates, 0x5eed);
    if args.json {
        let cells: Vec<serde_json::Value> = result
            .cells
            .iter()
            .map(|c| {
                serde_json::json!({
                    "cell": c.cell,
                    "run": c.run,
                    "metrics": c.metrics.iter().map(|m| serde_json::json!({
                        "metric": m.metric, "base": m.base, "value": m.value,
                        "delta": m.delta(), "relative": m.relative(),
                        "ci95": m.ci.map(|(a, b)| [a, b]), "significant": m.significant(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "baseline": result.baseline,
            "candidates": result.candidates,
            "cells": cells,
            "unmatched": result.unmatched.iter().map(|(r, c)| serde_json::json!({"run": r, "cell": c})).collect::<Vec<_>>(),
            "tripped": result.tripped,
        });
        say!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header([
                "cell",
                "run",
                "metric",
                "baseline",
                "value",
                "delta",
                "delta %",
                "95% CI",
                "significant",
            ]);
        for c in &result.cells {
            for m in &c.metrics {
                let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), format_value);
                t.add_row([
                    c.cell.clone(),
                    c.run.clone(),
                    m.metric.clone(),
                    f(m.base),
                    f(m.value),
                    m.delta()
                        .map_or_else(|| "-".to_owned(), |d| format!("{d:+.3}")),
                    m.relative()
                        .map_or_else(|| "-".to_owned(), |r| format!("{:+.1}%", r * 100.0)),
                    m.ci.map_or_else(|| "-".to_owned(), |(a, b)| format!("[{a:+.3}, {b:+.3}]")),
                    sig_mark(m.significant()).to_owned(),
                ]);
            }
        }
        say!("baseline: {}", result.baseline);
        say!("{t}");
        for (run, cell) in &result.unmatched {
            say!("only in {run}: {cell}");
        }
    }
    // Overlay charts and a Markdown summary.
    let datas: Vec<RunData> = runs.into_iter().map(|(d, _)| d).collect();
    let out_dir = args.out.clone().unwrap_or_else(|| {
        let ids: Vec<&str> = datas.iter().map(|d| d.manifest.run_id.as_str()).collect();
        std::path::PathBuf::from("harness-compare").join(ids.join("-vs-"))
    });
    let charts = compare::overlay_charts(&datas);
    let mut md = format!(
        "# Comparison\n\nbaseline: {}\n\ncandidates: {}\n\n",
        result.baseline,
        result.candidates.join(", ")
    );
    tokio::fs::create_dir_all(&out_dir)
        .await
        .map_err(|e| Error::io(format!("creating {}", out_dir.display()), e))?;
    for c in &charts {
        let (svg, png) = (c.svg()?, c.png()?);
        for (ext, data) in [("svg", svg.into_bytes()), ("png", png)] {
            let p = out_dir.join(format!("{}.{ext}", c.name));
            tokio::fs::write(&p, data)
                .await
                .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
        }
        md.push_str(&format!("![{}]({}.png)\n\n", c.name, c.name));
    }
    for g in &result.tripped {
        md.push_str(&format!("- gate tripped: {g}\n"));
    }
    let md_path = out_dir.join("compare.md");
    tokio::fs::write(&md_path, md)
        .await
        .map_err(|e| Error::io(format!("writing {}", md_path.display()), e))?;
    eprintln!("overlay charts: {}", out_dir.display());
    if result.tripped.is_empty() {
        if !gates.is_empty() {
            eprintln!("all {} gates passed", gates.len());
        }
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        for g in &result.tripped {
            eprintln!("gate tripped: {g}");
        }
        Ok(std::process::ExitCode::from(1))
    }
}
