//! `harness operator`: the controller of `DynamoBenchmark` resources.

use harness_core::{CancellationToken, Error, RunStatus};

use crate::app::App;
use crate::session::RunOptions;
use crate::wiring::kube_client;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The namespace to watch (default: the client's).
    #[arg(long)]
    namespace: Option<String>,
}

pub(super) async fn exec(app: &App, args: Args) -> Result<(), Error> {
    let client = kube_client().await?;
    let ns = args
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let operator = harness_k8s::operator::Operator::new(client, &ns, app.clone());
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    // SIGTERM (Kubernetes stopping the pod; the process may be PID 1) like SIGINT: runs are
    // cancelled, their teardown runs, and their resources stay `Running` for the next
    // operator to resume.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("operator: stopping");
        stop.cancel();
    });
    eprintln!("operator: watching DynamoBenchmarks in namespace {ns}");
    operator.run(&cancel).await;
    Ok(())
}

/// How the operator runs a `DynamoBenchmark`: as `harness run` would, with the resource's
/// store, reporting to the operator.
impl harness_k8s::operator::Runs for App {
    fn run(
        &self,
        req: harness_k8s::operator::RunRequest,
    ) -> futures::future::BoxFuture<'static, Result<RunStatus, Error>> {
        let app = self.clone();
        Box::pin(async move {
            let program =
                std::env::current_exe().map_err(|e| Error::io("finding the harness binary", e))?;
            let mut options = RunOptions::new()
                .run_id(req.run_id)
                .reporter(req.reporter)
                .cancel(req.cancel)
                .mock_program(program);
            if req.resume {
                options = options.resume();
            }
            if let Some(owner) = req.owner {
                options = options.kubernetes_owner(owner);
            }
            if let Some(url) = req.store {
                options = options.store(url);
            }
            let outcome = App::run(&app, req.experiment, options).await?;
            if let Some(spool) = outcome.spool.filter(|s| s.remaining > 0) {
                tracing::warn!(
                    remaining = spool.remaining,
                    errors = ?spool.errors,
                    "results wait in the spool; `harness push` uploads them"
                );
            }
            Ok(outcome.report.status)
        })
    }
}
