//! genai-perf: the `profile_export.json` that perf_analyzer writes for it. genai-perf needs
//! perf_analyzer, a C++ binary the PyPI package does not ship, so the test fixture is
//! written to perf_analyzer's documented layout by hand.
//!
//! The file holds `experiments`, each with `requests`; a cell is one experiment (a file
//! with several is refused with their list). Field mapping (per request):
//!
//! | harness | genai-perf |
//! |---|---|
//! | `start_ns` | `timestamp` |
//! | `first_token_ns`, `last_token_ns` | the first and last `response_timestamps` whose response carries content |
//! | `chunk_gaps_ns` | differences of consecutive content timestamps |
//! | `end_ns` | the last response timestamp |
//! | `output_tokens` | `usage.completion_tokens` of a response when present (`usage`), else the number of content chunks (`chunks`; genai-perf itself re-tokenises the text) |
//! | `input_tokens` | `usage.prompt_tokens` when present, else 0 |
//! | error | no response at all (`disconnect`), or an `error` object in a response (`server_error`) |

use std::path::Path;

use serde_json::Value;

use super::{Imported, Timeline, err, locate, read_json, records_of};
use crate::Error;
use crate::record::{ErrorKind, TokenSource};

pub(super) fn import(path: &Path) -> Result<Imported, Error> {
    let file = locate(path, &["profile_export.json"])?;
    let v = read_json(&file)?;
    let experiments = v
        .get("experiments")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            err(
                &file,
                None,
                "no `experiments`: not a genai-perf profile export",
            )
        })?;
    let experiment = match experiments.as_slice() {
        [one] => one,
        [] => return Err(err(&file, None, "has no experiments")),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|e| {
                    let x = e.get("experiment").cloned().unwrap_or(Value::Null);
                    format!(
                        "{} {}",
                        x.get("mode").and_then(Value::as_str).unwrap_or("?"),
                        x.get("value").cloned().unwrap_or(Value::Null)
                    )
                })
                .collect();
            return Err(err(
                &file,
                None,
                format!(
                    "holds {} experiments ({}); a cell imports one: export each load level \
                     to its own file",
                    many.len(),
                    list.join(", ")
                ),
            ));
        }
    };
    let requests = experiment
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| err(&file, None, "the experiment has no `requests`"))?;
    let mut out = Imported {
        tool: match v.get("version").and_then(Value::as_str) {
            Some(ver) => format!("genai-perf (perf_analyzer {ver})"),
            None => "genai-perf".into(),
        },
        files: vec![file.clone()],
        ..Imported::default()
    };
    out.records = records_of(&file, requests, timeline)?;
    Ok(out)
}

/// What one response (an SSE event or a whole body) says.
#[derive(Default)]
struct Response {
    content: bool,
    completion_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    error: Option<String>,
}

fn parse_response(output: &Value) -> Response {
    let mut r = Response::default();
    // Triton's generate endpoint: `text_output`; OpenAI: SSE text in `response`.
    if let Some(t) = output.get("text_output").and_then(Value::as_str) {
        r.content = !t.is_empty();
        return r;
    }
    let text = output
        .get("response")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for line in text.lines() {
        let data = line.strip_prefix("data:").unwrap_or(line).trim();
        if data.is_empty() || data == "[DONE]" {
            continue;
        }
        let Ok(json) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(e) = json.get("error") {
            r.error = Some(e.to_string());
        }
        if let Some(choice) = json
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        {
            let content = choice
                .pointer("/delta/content")
                .or_else(|| choice.pointer("/message/content"))
                .or_else(|| choice.get("text"))
                .and_then(Value::as_str);
            r.content |= content.is_some_and(|c| !c.is_empty());
        }
        if let Some(u) = json.get("usage").filter(|u| !u.is_null()) {
            r.completion_tokens = u.get("completion_tokens").and_then(Value::as_u64);
            r.prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64);
        }
    }
    r
}

fn timeline(r: &Value) -> Result<Timeline, String> {
    let start = r
        .get("timestamp")
        .and_then(Value::as_u64)
        .ok_or("no `timestamp`")?;
    let stamps: Vec<u64> = r
        .get("response_timestamps")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let outputs: Vec<Value> = r
        .get("response_outputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if stamps.len() != outputs.len() {
        return Err(format!(
            "{} response timestamps but {} response outputs",
            stamps.len(),
            outputs.len()
        ));
    }
    let mut content = Vec::new();
    let (mut completion, mut prompt, mut error) = (None, None, None);
    for (t, o) in stamps.iter().zip(&outputs) {
        let resp = parse_response(o);
        if resp.content {
            content.push(
                t.checked_sub(start)
                    .ok_or("a response before its request")?,
            );
        }
        completion = resp.completion_tokens.or(completion);
        prompt = resp.prompt_tokens.or(prompt);
        error = resp.error.or(error);
    }
    if let Some(w) = stamps.windows(2).find(|w| w[1] < w[0]) {
        return Err(format!(
            "response timestamps out of order: {} after {}",
            w[1], w[0]
        ));
    }
    let end = stamps
        .last()
        .map(|e| e.checked_sub(start).ok_or("a response before its request"))
        .transpose()?;
    let error = match (error, stamps.is_empty()) {
        (Some(e), _) => Some((ErrorKind::ServerError, e)),
        (None, true) => Some((ErrorKind::Disconnect, "no response".to_owned())),
        (None, false) => None,
    };
    let (output_tokens, source) = match completion {
        Some(c) => (c, TokenSource::Usage),
        None => (content.len() as u64, TokenSource::Chunks),
    };
    Ok(Timeline {
        start_ns: start,
        ttft_ns: content.first().copied(),
        gaps_ns: content.windows(2).map(|w| w[1] - w[0]).collect(),
        latency_ns: content.last().copied(),
        end_ns: end,
        input_tokens: prompt.unwrap_or(0),
        output_tokens,
        source: Some(source),
        error,
        ..Timeline::default()
    })
}
