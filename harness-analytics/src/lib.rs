//! Metric tables, statistics and reports of harness.
//!
//! Not implemented yet: this crate will own the versioned Arrow schemas (per-request
//! records and per-cell summaries), parquet I/O, statistics, charts, reports and run
//! comparison. Until then runs store JSON summaries through `harness-core`, and this crate
//! exports nothing.
