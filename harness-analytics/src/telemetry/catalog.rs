//! What known servers' metrics mean: each [`Quantity`] lists the names under which vLLM,
//! SGLang, TensorRT-LLM, Dynamo's frontend and workers, llama.cpp's server, NVIDIA's DCGM
//! exporter and harness's mock report it.

/// How the series of one quantity (one per GPU, per engine, per label set) combine at one
/// scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Across {
    /// Their sum (requests running on every engine, power of every GPU).
    Sum,
    /// Their mean (utilisation of the GPUs).
    Mean,
    /// The largest (the fullest KV cache).
    Max,
}

/// What a quantity is.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum QuantityKind {
    /// A level: summarised as `server.<name>.mean` and `.max`.
    Gauge(Across),
    /// A count that only goes up: summarised as `server.<name>_per_s`, its rate over the
    /// window, and cross-checked against the client's count when it has one.
    Counter,
    /// A histogram in seconds: summarised as `server.<name>.p50`, `.p90`, `.p99` and
    /// `.mean`, in milliseconds, from the buckets' increase over the window.
    Histogram,
}

/// One quantity and where servers report it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Quantity {
    /// The common name, `server.<name>...` in summaries.
    pub name: &'static str,
    /// Its unit as summarised.
    pub unit: &'static str,
    /// What it is.
    pub kind: QuantityKind,
    /// The servers' names for it, as alternatives: the first alternative any of whose names
    /// a target exposes is used, and its names' series are combined (llama.cpp counts cached
    /// and processed prompt tokens apart). Counters and gauges are sample names; histograms
    /// are family names (without `_bucket`).
    pub sources: &'static [&'static [&'static str]],
}

use Across::{Max, Mean, Sum};
use QuantityKind::{Counter, Gauge, Histogram};

/// Every quantity harness knows.
pub const QUANTITIES: &[Quantity] = &[
    Quantity {
        name: "kv_cache_usage",
        unit: "fraction",
        kind: Gauge(Max),
        sources: &[
            &["vllm:kv_cache_usage_perc"],
            &["vllm:gpu_cache_usage_perc"],
            &["sglang:token_usage"],
            &["llamacpp:kv_cache_usage_ratio"],
            &["trtllm_kv_cache_utilization"],
            &["dynamo_component_kvstats_gpu_cache_usage_percent"],
        ],
    },
    Quantity {
        name: "running",
        unit: "requests",
        kind: Gauge(Sum),
        sources: &[
            &["vllm:num_requests_running"],
            &["sglang:num_running_reqs"],
            &["llamacpp:requests_processing"],
            &["dynamo_frontend_inflight_requests"],
            &["mock_requests_running"],
        ],
    },
    Quantity {
        name: "waiting",
        unit: "requests",
        kind: Gauge(Sum),
        sources: &[
            &["vllm:num_requests_waiting"],
            &["sglang:num_queue_reqs"],
            &["llamacpp:requests_deferred"],
            &["dynamo_frontend_queued_requests"],
            &["mock_requests_waiting"],
        ],
    },
    Quantity {
        name: "requests",
        unit: "requests",
        kind: Counter,
        sources: &[
            &["vllm:request_success_total"],
            &["sglang:num_requests_total"],
            &["trtllm_request_success_total"],
            &["dynamo_frontend_requests_total"],
            &["mock_completed_total"],
        ],
    },
    Quantity {
        name: "prompt_tokens",
        unit: "tokens",
        kind: Counter,
        sources: &[
            &["vllm:prompt_tokens_total"],
            &["sglang:prompt_tokens_total"],
            &[
                "llamacpp:prompt_tokens_total",
                "llamacpp:prompt_tokens_cached_total",
            ],
            &["dynamo_frontend_input_sequence_tokens_sum"],
            &["mock_prompt_tokens_total"],
        ],
    },
    Quantity {
        name: "generation_tokens",
        unit: "tokens",
        kind: Counter,
        sources: &[
            &["vllm:generation_tokens_total"],
            &["sglang:generation_tokens_total"],
            &["llamacpp:tokens_predicted_total"],
            &["dynamo_frontend_output_sequence_tokens_sum"],
            &["mock_output_tokens_total"],
        ],
    },
    Quantity {
        name: "prefix_cache_queries",
        unit: "tokens",
        kind: Counter,
        sources: &[
            &["vllm:prefix_cache_queries_total"],
            &["mock_prefix_cache_queries_total"],
            &[
                "llamacpp:prompt_tokens_total",
                "llamacpp:prompt_tokens_cached_total",
            ],
        ],
    },
    Quantity {
        name: "prefix_cache_hits",
        unit: "tokens",
        kind: Counter,
        sources: &[
            &["vllm:prefix_cache_hits_total"],
            &["mock_prefix_cache_hits_total"],
            &["llamacpp:prompt_tokens_cached_total"],
        ],
    },
    Quantity {
        name: "prefix_cache_hit_rate",
        unit: "fraction",
        kind: Gauge(Mean),
        sources: &[&["sglang:cache_hit_rate"], &["trtllm_kv_cache_hit_rate"]],
    },
    Quantity {
        name: "ttft",
        unit: "ms",
        kind: Histogram,
        sources: &[
            &["vllm:time_to_first_token_seconds"],
            &["sglang:time_to_first_token_seconds"],
            &["trtllm_time_to_first_token_seconds"],
            &["dynamo_frontend_time_to_first_token_seconds"],
            &["mock_time_to_first_token_seconds"],
        ],
    },
    Quantity {
        name: "itl",
        unit: "ms",
        kind: Histogram,
        sources: &[
            &["vllm:inter_token_latency_seconds"],
            &["vllm:time_per_output_token_seconds"],
            &["sglang:inter_token_latency_seconds"],
            &["sglang:time_per_output_token_seconds"],
            &["trtllm_time_per_output_token_seconds"],
            &["dynamo_frontend_inter_token_latency_seconds"],
        ],
    },
    Quantity {
        name: "request_latency",
        unit: "ms",
        kind: Histogram,
        sources: &[
            &["vllm:e2e_request_latency_seconds"],
            &["sglang:e2e_request_latency_seconds"],
            &["trtllm_e2e_request_latency_seconds"],
            &["dynamo_frontend_request_duration_seconds"],
        ],
    },
    Quantity {
        name: "queue_time",
        unit: "ms",
        kind: Histogram,
        sources: &[&["vllm:request_queue_time_seconds"]],
    },
    Quantity {
        name: "gpu_util",
        unit: "%",
        kind: Gauge(Mean),
        sources: &[&["DCGM_FI_DEV_GPU_UTIL"]],
    },
    Quantity {
        name: "gpu_memory_used",
        unit: "MiB",
        kind: Gauge(Sum),
        sources: &[&["DCGM_FI_DEV_FB_USED"]],
    },
    Quantity {
        name: "gpu_power",
        unit: "W",
        kind: Gauge(Sum),
        sources: &[&["DCGM_FI_DEV_POWER_USAGE"]],
    },
];

/// The quantity named `name`.
pub fn quantity(name: &str) -> Option<&'static Quantity> {
    QUANTITIES.iter().find(|q| q.name == name)
}

/// The unit of the server metric `name` (without `server.`, e.g. `running.mean`,
/// `generation_tokens_per_s`, `ttft.p99`); `None` for a name the summaries never produce.
///
/// ```
/// use harness_analytics::telemetry::server_unit;
/// assert_eq!(server_unit("ttft.p99"), Some("ms"));
/// assert_eq!(server_unit("generation_tokens_per_s"), Some("tokens/s"));
/// assert_eq!(server_unit("running.p99"), None);
/// ```
pub fn server_unit(name: &str) -> Option<&'static str> {
    if name == "energy_per_output_token_j" {
        return Some("J/token");
    }
    let (base, stat) = name.split_once('.').unwrap_or((name, ""));
    if let Some(q) = base.strip_suffix("_per_s").and_then(quantity) {
        return (q.kind == Counter && stat.is_empty()).then_some(match q.unit {
            "requests" => "requests/s",
            "tokens" => "tokens/s",
            _ => "1/s",
        });
    }
    let q = quantity(base)?;
    let known = match q.kind {
        Gauge(_) => matches!(stat, "mean" | "max"),
        Histogram => matches!(stat, "p50" | "p90" | "p99" | "mean"),
        Counter => false,
    };
    known.then_some(q.unit)
}

impl Quantity {
    /// Whether sample `sample` (a full sample name) belongs to source name `source`.
    pub(crate) fn matches(&self, source: &str, sample: &str) -> bool {
        match self.kind {
            Histogram => sample
                .strip_prefix(source)
                .is_some_and(|rest| matches!(rest, "_bucket" | "_sum" | "_count")),
            _ => sample == source,
        }
    }

    /// The alternative of [`Quantity::sources`] that `names` (a target's sample names)
    /// answer, if any.
    pub(crate) fn source_in<'a>(
        &self,
        names: impl Iterator<Item = &'a str> + Clone,
    ) -> Option<&'static [&'static str]> {
        self.sources.iter().copied().find(|alt| {
            alt.iter()
                .any(|src| names.clone().any(|n| self.matches(src, n)))
        })
    }
}
