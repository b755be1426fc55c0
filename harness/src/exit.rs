//! The program's exit codes, defined once.

/// Every cell succeeded and every result is in the store.
pub const EXIT_OK: u8 = 0;
/// Some cells or the run failed.
pub const EXIT_FAILED: u8 = 1;
/// Invalid input: the experiment, an override, an argument, or a store that cannot be used.
pub const EXIT_INVALID: u8 = 2;
/// The run ended but some of its results are still in the local spool, waiting for
/// `harness push` (its remote store stopped answering).
pub const EXIT_SPOOLED: u8 = 3;
/// The run was interrupted (SIGINT, SIGTERM).
pub const EXIT_INTERRUPTED: u8 = 130;
