//! [`Record`]: one request as measured, the row of the per-request table. Every source of
//! records (the built-in load generator, importers of other tools' exports) produces these,
//! so one schema and one set of metric definitions serve them all.

use serde::{Deserialize, Serialize};

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection could not be made.
    Connect,
    /// The request did not finish within its timeout.
    Timeout,
    /// The server answered with a non-2xx status.
    HttpStatus,
    /// A chunk was not valid SSE or not a valid JSON chunk.
    MalformedStream,
    /// The connection ended before the response was complete.
    Disconnect,
    /// The server sent an error object inside the stream.
    ServerError,
}

impl ErrorKind {
    /// The stable name used in records and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::MalformedStream => "malformed_stream",
            ErrorKind::Disconnect => "disconnect",
            ErrorKind::ServerError => "server_error",
        }
    }

    /// Every kind, in a stable order (the summary table has a column for each).
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::HttpStatus,
        ErrorKind::MalformedStream,
        ErrorKind::Disconnect,
        ErrorKind::ServerError,
    ];

    /// The kind of a name written by [`ErrorKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a request's output token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenSource {
    /// The server's `usage`.
    Usage,
    /// The number of content chunks (servers send about one token per chunk).
    Chunks,
    /// The client's tokenizer, applied to the output text.
    Tokenizer,
}

impl TokenSource {
    /// The stable name used in records and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Usage => "usage",
            TokenSource::Chunks => "chunks",
            TokenSource::Tokenizer => "tokenizer",
        }
    }

    /// The source of a name written by [`TokenSource::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            TokenSource::Usage,
            TokenSource::Chunks,
            TokenSource::Tokenizer,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// One request, as measured. Times are nanoseconds since the cell's epoch, on a monotonic
/// clock. Importers of other tools' results build these too, so every field is public.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the cell's sequence of requests, from 0.
    pub index: u64,
    /// Sent during warmup: kept, but left out of the statistics.
    pub warmup: bool,
    /// When the request was sent.
    pub start_ns: u64,
    /// When the first chunk with content arrived.
    pub first_token_ns: Option<u64>,
    /// When the last chunk with content arrived.
    pub last_token_ns: Option<u64>,
    /// When the response ended (or failed).
    pub end_ns: u64,
    /// Gaps between consecutive content chunks.
    pub chunk_gaps_ns: Vec<u64>,
    /// Chunks with content.
    pub content_chunks: u32,
    /// Input tokens: the server's count when it reports one, else the prompt's.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Where `output_tokens` came from.
    pub output_token_source: TokenSource,
    /// The HTTP status, when one arrived.
    pub http_status: Option<u16>,
    /// Why it failed.
    pub error: Option<ErrorKind>,
    /// The failure's message.
    pub error_message: Option<String>,
    /// When an open loop meant to send the request (its arrival time); `None` in a closed
    /// loop, where a request is due when the previous one of its client ends. A start later
    /// than this is queueing in the client, which `start_ns`-based latencies leave out.
    #[serde(default)]
    pub scheduled_ns: Option<u64>,
    /// Re-sent once because the pooled keep-alive connection it was first written to had
    /// been closed by the server before answering.
    #[serde(default)]
    pub retried: bool,
    /// Input tokens the server served from its prefix cache, when it reports them
    /// (`usage.prompt_tokens_details.cached_tokens`).
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    /// The multi-turn session the request belongs to (sessions and conversations only).
    #[serde(default)]
    pub session: Option<u64>,
    /// Its turn in the session, from 1.
    #[serde(default)]
    pub turn: Option<u32>,
}

impl Record {
    /// Whether the request succeeded.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Time to first token (first content chunk - start), in seconds.
    pub fn ttft_s(&self) -> Option<f64> {
        self.first_token_ns
            .map(|t| (t - self.start_ns) as f64 / 1e9)
    }

    /// Request latency (last content chunk - start), in seconds.
    pub fn latency_s(&self) -> Option<f64> {
        self.last_token_ns.map(|t| (t - self.start_ns) as f64 / 1e9)
    }

    /// Inter-token latency, `(latency - ttft) / (output tokens - 1)`, in seconds; needs at
    /// least two output tokens (vLLM calls this TPOT).
    pub fn itl_s(&self) -> Option<f64> {
        let (first, last) = (self.first_token_ns?, self.last_token_ns?);
        (self.output_tokens >= 2)
            .then(|| (last - first) as f64 / 1e9 / (self.output_tokens - 1) as f64)
    }
}

impl Record {
    /// A successful streamed request: sent at `start_ns`, first content at `first_ns`, last
    /// at `last_ns` (the end), `tokens` output tokens in as many evenly spaced chunks.
    pub fn succeeded(
        index: u64,
        start_ns: u64,
        first_ns: u64,
        last_ns: u64,
        tokens: u64,
        source: TokenSource,
    ) -> Self {
        let gaps = tokens.saturating_sub(1);
        let gap = (last_ns - first_ns).checked_div(gaps).unwrap_or(0);
        Record {
            index,
            warmup: false,
            start_ns,
            first_token_ns: Some(first_ns),
            last_token_ns: Some(last_ns),
            end_ns: last_ns,
            chunk_gaps_ns: vec![gap; gaps as usize],
            content_chunks: tokens as u32,
            input_tokens: 0,
            output_tokens: tokens,
            output_token_source: source,
            http_status: Some(200),
            error: None,
            error_message: None,
            scheduled_ns: None,
            retried: false,
            cached_tokens: None,
            session: None,
            turn: None,
        }
    }
}
