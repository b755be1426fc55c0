//! Criterion benchmarks of harness: `cargo bench -p benches`. See `docs/PERFORMANCE.md`.
