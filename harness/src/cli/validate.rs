//! `harness validate`: check an experiment file and print its plan.

use std::path::PathBuf;

use harness_core::Error;

use super::load;
use crate::app::App;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The experiment file.
    experiment: PathBuf,
    /// Override a value: `--set policy.retries=0`, `--set concurrency=[1,2]`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Print the resolved experiment and plan as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn exec(app: &App, args: &Args) -> Result<(), Error> {
    let (path, json) = (args.experiment.as_path(), args.json);
    let (exp, _) = load(path, &args.sets)?;
    let plan = exp.plan()?;
    let url = crate::stores::store_url(&crate::stores::StoreArgs::default(), Some(&exp.storage));
    crate::wiring::build_pipelines(
        app,
        &exp,
        &path.display().to_string(),
        &url,
        &crate::wiring::MockServing::InProcess,
        &crate::wiring::CellSteps::default(),
    )?;
    if json {
        let out = serde_json::json!({
            "experiment": exp.to_json(),
            "cells": plan.cells().iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        });
        say!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    say!("{}: valid", path.display());
    if !exp.treatments.is_empty() {
        say!(
            "treatments, deployed in turn: {}",
            exp.treatment_names().join(", ")
        );
    }
    if let Some(search) = &exp.search {
        // The plan holds every candidate (and its repeats); the search probes few of them.
        let candidates = search.candidates();
        let series = plan.len() / candidates.len().max(1) / search_repeats(search);
        say!(
            "experiment `{}`: an SLO search of {} over {} candidates ({} to {}) in each of {series} series, at most {} probes each",
            exp.name,
            search.axis.param(),
            candidates.len(),
            harness_core::config::values::format_number(search.min),
            harness_core::config::values::format_number(search.max),
            search.max_probes
        );
        for (metric, limit) in &search.slo {
            say!(
                "  SLO  {metric} <= {}",
                harness_core::config::values::format_number(limit.get())
            );
        }
        return Ok(());
    }
    say!("experiment `{}`: {} cells", exp.name, plan.len());
    for cell in plan.cells() {
        say!("  {:>4}  {}", cell.index + 1, cell.id);
    }
    Ok(())
}

/// How many cells a search plans per candidate value.
fn search_repeats(search: &harness_core::config::Search) -> usize {
    if search.confirm {
        harness_core::search::MAX_REPEATS as usize
    } else {
        1
    }
}
