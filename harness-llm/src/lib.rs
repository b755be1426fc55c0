//! OpenAI-compatible load generation for harness.
//!
//! Not implemented yet: this crate will hold the streaming client, prompt synthesis, the
//! load scheduler, the benchmark step and the mock server. It exports nothing until then;
//! `harness run` says plainly that it does not benchmark without it.
