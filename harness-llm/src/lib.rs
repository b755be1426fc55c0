//! OpenAI-compatible load generation for harness.
//!
//! * [`client`]: a pooled streaming client that turns one request into one
//!   [`client::RequestRecord`] with monotonic nanosecond timestamps.
//! * [`load`]: closed loop (concurrency) and open loop (request rate, Poisson or constant)
//!   scheduling, with warmup.
//! * [`prompts`]: prompts of an exact token count under a built-in tiktoken encoding.
//! * [`step::BenchmarkStep`]: all of the above as a pipeline step; records and statistics
//!   are harness-analytics' ([`harness_analytics::record::Record`], `CellStats`).
//! * [`checks`]: functional and accuracy checks of an endpoint, as steps.
//! * [`tools`]: other tools as steps: aiperf, and any command whose export is imported.
//! * [`mock`]: a mock OpenAI server with fault injection.
//! * [`sse`], [`openai`]: the stream parser and the wire format.

pub mod checks;
pub mod client;
mod clock;
mod http1;
pub mod load;
pub mod mock;
pub mod openai;
pub mod prompts;
mod rx;
mod server;
pub mod sse;
pub mod step;
pub mod tools;

pub use step::{BenchmarkStep, deployment_steps, mock_workload};
