//! The one error type of this crate.

use std::time::Duration;

use crate::config::ConfigError;

/// A boxed error from user code (a step, a backend or a store written outside this crate).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in harness-core, sorted by what the caller does about it.
///
/// * [`Error::Config`] and [`Error::InvalidInput`]: fix the input and try again.
/// * [`Error::NotFound`] and [`Error::AlreadyExists`]: a store or backend precondition.
/// * [`Error::Transient`]: worth retrying; the retry layer does so with backoff.
/// * [`Error::Timeout`] and [`Error::Cancelled`]: the work was stopped from outside.
/// * [`Error::Failed`]: the work ran and failed; retrying will not help.
/// * [`Error::NotSupported`]: this backend or store cannot do that.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The experiment file or an override is invalid.
    #[error(transparent)]
    Config(#[from] Box<ConfigError>),

    /// An argument handed to the API is invalid (a key, a spec, a run id).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid, e.g. "artifact key `a/../b`".
        what: String,
        /// Why.
        reason: String,
    },

    /// The object or workload does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },

    /// The object exists and the operation must not overwrite it.
    #[error("already exists: {what}")]
    AlreadyExists {
        /// What exists already.
        what: String,
    },

    /// A failure that may go away when retried (connection refused, 503, a store hiccup).
    #[error("{context}: {source}")]
    Transient {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// The work did not finish in time.
    #[error("{what} timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// What timed out, e.g. "step `benchmark`".
        what: String,
        /// The limit that was exceeded.
        after: Duration,
    },

    /// The work was cancelled (Ctrl-C, SIGTERM, fail-fast, or the caller's token).
    #[error("cancelled: {what}")]
    Cancelled {
        /// What was cancelled.
        what: String,
    },

    /// The work ran and failed; retrying will not change that.
    #[error("{context}: {reason}")]
    Failed {
        /// What was being done.
        context: String,
        /// Why it failed, for people.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The backend or store does not support this operation.
    #[error("not supported: {what}")]
    NotSupported {
        /// What is not supported.
        what: String,
    },

    /// An I/O error of the local machine.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A [`Error::Failed`] without a source.
    pub fn failed(context: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Failed {
            context: context.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// A [`Error::Failed`] caused by `source`, which is kept (its message is the reason).
    pub fn failed_from(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        Error::Failed {
            context: context.into(),
            reason: source.to_string(),
            source: Some(source),
        }
    }

    /// A [`Error::Transient`] from any error.
    pub fn transient(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Transient {
            context: context.into(),
            source: source.into(),
        }
    }

    /// An [`Error::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`Error::InvalidInput`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Whether retrying may help: true for [`Error::Transient`] only.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// A short, stable name of the variant, for journals and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::InvalidInput { .. } => "invalid_input",
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::Transient { .. } => "transient",
            Error::Timeout { .. } => "timeout",
            Error::Cancelled { .. } => "cancelled",
            Error::Failed { .. } => "failed",
            Error::NotSupported { .. } => "not_supported",
            Error::Io { .. } => "io",
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(Box::new(e))
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
