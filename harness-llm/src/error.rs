//! The error type of this crate's own functions (steps return `harness_core::Error`).

use std::path::PathBuf;

use harness_core::BoxError;

/// What can go wrong in harness-llm's functions: building a client, a prompt synthesiser or
/// a dataset, and scoring a reply. Converts into `harness_core::Error` (invalid input, or an
/// I/O or tokenizer failure with its source kept).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value handed to the library is not valid: a URL, a header, an encoding's name, a
    /// dataset line, an expected answer.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was invalid, e.g. "the URL `ftp://x`" or "prompts.jsonl:3".
        what: String,
        /// Why.
        reason: String,
    },

    /// A file could not be read.
    #[error("cannot read `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A tokenizer could not be loaded, could not encode, or cannot build prompts of an
    /// exact length.
    #[error("tokenizer `{name}`: {reason}")]
    Tokenizer {
        /// The encoding's name or the `tokenizer.json` file.
        name: String,
        /// What failed.
        reason: String,
        /// The tokenizer library's error, when it gave one.
        #[source]
        source: Option<BoxError>,
    },

    /// TLS could not be set up for an `https` URL.
    #[error("TLS for `{url}`: {reason}")]
    Tls {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
        /// The TLS library's error, when it gave one.
        #[source]
        source: Option<BoxError>,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn tokenizer(
        name: impl Into<String>,
        reason: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Error::Tokenizer {
            name: name.into(),
            reason: reason.into(),
            source,
        }
    }

    /// This error as harness-core's, under `field` (the experiment field whose value was
    /// wrong): invalid input stays invalid input; a read or tokenizer failure keeps its
    /// source.
    pub fn at(self, field: &str) -> harness_core::Error {
        match self {
            Error::Invalid { .. } => harness_core::Error::invalid(field, self.to_string()),
            other => harness_core::Error::Failed {
                context: field.to_owned(),
                reason: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}
