//! OpenAI-compatible load generation for harness.
//!
//! * [`client`]: a pooled streaming client that turns one request into one
//!   [`client::Record`] with monotonic nanosecond timestamps.
//! * [`load`]: closed loop (concurrency) and open loop (request rate, Poisson or constant)
//!   scheduling, with warmup.
//! * [`prompts`]: prompts of an exact token count under a built-in tiktoken encoding.
//! * [`workload`]: shared prefixes, multi-turn sessions, trace replay and conversations.
//! * [`step::BenchmarkStep`]: all of the above as a pipeline step; records and statistics
//!   are harness-analytics' ([`harness_analytics::record::Record`], `CellStats`).
//! * [`checks`]: functional and accuracy checks of an endpoint, as steps.
//! * [`tools`]: other tools as steps: aiperf, and any command whose export is imported.
//! * [`telemetry`]: the server's Prometheus metrics scraped during each cell, off the load
//!   generator's threads.
//! * [`mock`]: a mock OpenAI server with fault injection.
//! * [`client::sse`], [`openai`]: the stream parser and the wire format.

pub mod checks;
pub mod client;
mod clock;
mod error;
pub mod load;
pub mod mock;
pub mod openai;
pub mod prompts;
mod sessions;
pub mod step;
pub mod telemetry;
pub mod tools;
pub mod workload;

pub use error::{Error, Result};
pub use step::BenchmarkStep;

/// Makes ring the process's default TLS crypto provider unless one is installed already:
/// reqwest is built without a provider of its own (so the workspace compiles one, not two)
/// and needs a default before a client is built. The checks call it; so may a program that
/// builds reqwest clients itself.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is the default already: fine, it is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
