//! `harness mock`: serve the mock OpenAI-compatible server.

use harness_core::Error;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port (0: a free one, printed on start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Worker threads (1 serves from one core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Time to first token, ms.
    #[arg(long)]
    ttft_ms: Option<f64>,
    /// Inter-token latency, ms.
    #[arg(long)]
    itl_ms: Option<f64>,
    /// Delay jitter, a fraction (0 to 1).
    #[arg(long)]
    jitter: Option<f64>,
    /// Output tokens per response (default: the request's max_tokens).
    #[arg(long)]
    output_tokens: Option<u32>,
    /// Streams served at once; the rest wait in arrival order (default: no limit).
    #[arg(long)]
    slots: Option<u32>,
    /// Fraction of requests answered with an error status.
    #[arg(long)]
    error_rate: Option<f64>,
    /// Fraction of streams cut halfway.
    #[arg(long)]
    disconnect_rate: Option<f64>,
    /// Fraction of streams that stall after the first token.
    #[arg(long)]
    stall_rate: Option<f64>,
    /// Fraction of streams with a malformed chunk.
    #[arg(long)]
    malformed_rate: Option<f64>,
    /// The whole configuration as JSON (the experiment's `deployment.mock` section); the
    /// flags above override it.
    #[arg(long)]
    config: Option<String>,
}

/// Serves the mock until SIGINT or SIGTERM.
pub(super) fn exec(args: &Args) -> Result<(), Error> {
    use harness_core::config::MockDeployment;
    let mut cfg: MockDeployment = match &args.config {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| Error::invalid("--config", format!("not a mock configuration: {e}")))?,
        None => MockDeployment::default(),
    };
    let set = |slot: &mut f64, v: Option<f64>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut cfg.ttft_ms, args.ttft_ms);
    set(&mut cfg.itl_ms, args.itl_ms);
    set(&mut cfg.jitter, args.jitter);
    set(&mut cfg.error_rate, args.error_rate);
    set(&mut cfg.disconnect_rate, args.disconnect_rate);
    set(&mut cfg.stall_rate, args.stall_rate);
    set(&mut cfg.malformed_rate, args.malformed_rate);
    if let Some(n) = args.output_tokens {
        cfg.output_tokens = Some(
            std::num::NonZeroU32::new(n)
                .ok_or_else(|| Error::invalid("--output-tokens", "must be at least 1"))?,
        );
    }
    if let Some(n) = args.slots {
        cfg.slots = Some(
            std::num::NonZeroU32::new(n)
                .ok_or_else(|| Error::invalid("--slots", "must be at least 1"))?,
        );
    }
    // Validate through the same rules as the experiment file.
    let json = serde_json::to_value(&cfg).map_err(|e| Error::invalid("mock", e.to_string()))?;
    let cfg: MockDeployment =
        serde_json::from_value(json).map_err(|e| Error::invalid("mock", e.to_string()))?;
    cfg.check().map_err(|e| Error::invalid("mock", e))?;
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| Error::io("starting the runtime", e))?;
    runtime.block_on(async {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::io(format!("binding {addr}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("reading the address", e))?;
        say!(
            "mock OpenAI server on http://{local} (ttft {} ms, itl {} ms)",
            cfg.ttft_ms,
            cfg.itl_ms
        );
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            }
        };
        harness_llm::mock::serve(cfg, listener, shutdown)
            .await
            .map_err(|e| Error::io("serving", e))
    })
}
