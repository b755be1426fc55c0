//! The OpenAI-compatible wire format: request bodies and response chunks, for
//! `/v1/chat/completions` and `/v1/completions`.

use std::borrow::Cow;

use harness_core::config::EndpointType;
use serde::Deserialize;

/// Token counts the server reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Input tokens served from the server's prefix cache
    /// (`prompt_tokens_details.cached_tokens`), when it reports them.
    #[serde(
        default,
        rename = "prompt_tokens_details",
        deserialize_with = "de_cached_tokens"
    )]
    pub cached_tokens: Option<u64>,
}

/// `prompt_tokens_details` (an object, or null) to its `cached_tokens`.
fn de_cached_tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Details {
        #[serde(default)]
        cached_tokens: Option<u64>,
    }
    Ok(Option::<Details>::deserialize(d)?.and_then(|x| x.cached_tokens))
}

/// Who said a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions before the conversation.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

/// One message of a chat history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

#[derive(Deserialize)]
struct TextChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
}

/// Appends the generated content of one chunk (or a whole response) to `out`: what a
/// multi-turn session carries into its next turn. Reasoning is left out, as chat templates
/// drop it from the history.
///
/// # Errors
/// The JSON error when the payload is not a chunk object.
pub fn append_text(data: &str, out: &mut String) -> Result<(), serde_json::Error> {
    let chunk: TextChunk<'_> = serde_json::from_str(data)?;
    for c in chunk.choices.into_iter().flatten() {
        for m in [&c.delta, &c.message].into_iter().flatten() {
            out.push_str(m.content.as_deref().unwrap_or_default());
        }
        out.push_str(c.text.as_deref().unwrap_or_default());
    }
    Ok(())
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default)]
    choices: TextBytes,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default, borrow)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Said<'a>>,
    #[serde(default, borrow)]
    message: Option<Said<'a>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Said<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
}

/// The generated text's length summed over `choices`, without collecting them: one chunk
/// per token is parsed, so no allocation per chunk.
#[derive(Default)]
struct TextBytes(usize);

impl<'de> Deserialize<'de> for TextBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Sum;
        impl<'de> serde::de::Visitor<'de> for Sum {
            type Value = TextBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<TextBytes, A::Error> {
                let mut n = 0;
                while let Some(c) = seq.next_element::<Choice<'de>>()? {
                    for m in [&c.delta, &c.message].into_iter().flatten() {
                        n += m.content.as_deref().map_or(0, str::len);
                        n += m.reasoning_content.as_deref().map_or(0, str::len);
                    }
                    n += c.text.as_deref().map_or(0, str::len);
                }
                Ok(TextBytes(n))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<TextBytes, E> {
                Ok(TextBytes(0)) // `"choices": null`
            }
        }
        d.deserialize_any(Sum)
    }
}

/// What one response chunk (or a whole non-streamed response) carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkInfo {
    /// Bytes of generated text (content and reasoning); 0 for role-only and usage chunks.
    pub text_bytes: usize,
    /// Usage, when the chunk reports it.
    pub usage: Option<Usage>,
    /// An error message sent inside the stream.
    pub error: Option<String>,
}

/// Parses one `data:` payload or a non-streamed body.
///
/// # Errors
/// The JSON error when the payload is not a chunk object.
pub fn parse_chunk(data: &str) -> Result<ChunkInfo, serde_json::Error> {
    let chunk: Chunk<'_> = serde_json::from_str(data)?;
    Ok(ChunkInfo {
        text_bytes: chunk.choices.0,
        usage: chunk.usage,
        error: chunk.error.map(|e| {
            e.message
                .map_or_else(|| "error".to_owned(), Cow::into_owned)
        }),
    })
}

/// The API path's default for an endpoint type.
pub fn default_path(kind: EndpointType) -> &'static str {
    match kind {
        EndpointType::Completions => "/v1/completions",
        _ => "/v1/chat/completions",
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a [Message]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(serde::Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// Builds a request body. `extra` fields are written last and replace the fields of the
/// same name (e.g. `max_tokens`), so they can set anything (`ignore_eos`, `min_tokens`,
/// `temperature`). Serialised straight from borrowed data: the prompt is copied once, into
/// the body.
pub fn request_body(
    kind: EndpointType,
    model: &str,
    prompt: &str,
    max_tokens: u32,
    stream: bool,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Vec<u8> {
    if matches!(kind, EndpointType::Completions) {
        return body(kind, model, None, prompt, max_tokens, stream, extra);
    }
    let messages = [Message::new(Role::User, prompt)];
    body(kind, model, Some(&messages), "", max_tokens, stream, extra)
}

/// Builds a request body for a chat history. On a completions endpoint the history's
/// contents are joined into one prompt, each message on a line of its own.
pub fn history_body(
    kind: EndpointType,
    model: &str,
    messages: &[Message],
    max_tokens: u32,
    stream: bool,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Vec<u8> {
    if matches!(kind, EndpointType::Completions) {
        let prompt: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        return body(
            kind,
            model,
            None,
            &prompt.join("\n"),
            max_tokens,
            stream,
            extra,
        );
    }
    body(kind, model, Some(messages), "", max_tokens, stream, extra)
}

fn body(
    kind: EndpointType,
    model: &str,
    messages: Option<&[Message]>,
    prompt: &str,
    max_tokens: u32,
    stream: bool,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Vec<u8> {
    let own = |key: &str| !extra.contains_key(key);
    let chat = !matches!(kind, EndpointType::Completions);
    let size = prompt.len() + messages.map_or(0, |m| m.iter().map(|m| m.content.len() + 32).sum());
    let body = Body {
        model: own("model").then_some(model),
        messages: messages.filter(|_| chat && own("messages")),
        prompt: (!chat && own("prompt")).then_some(prompt),
        max_tokens: own("max_tokens").then_some(max_tokens),
        stream: own("stream").then_some(stream),
        stream_options: (stream && own("stream_options")).then_some(StreamOptions {
            include_usage: true,
        }),
        extra,
    };
    let mut out = Vec::with_capacity(size + 256);
    // Serialising borrowed strings and a JSON map cannot fail.
    let _ = serde_json::to_writer(&mut out, &body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_chunks_count_content_and_reasoning_not_roles() {
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(parse_chunk(role).expect("ok").text_bytes, 0);
        let tok = r#"{"choices":[{"index":0,"delta":{"content":"Hello"}}]}"#;
        assert_eq!(parse_chunk(tok).expect("ok").text_bytes, 5);
        let think = r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#;
        assert_eq!(parse_chunk(think).expect("ok").text_bytes, 3);
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
        let info = parse_chunk(usage).expect("ok");
        assert_eq!(
            info.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 34,
                cached_tokens: None,
            })
        );
        assert_eq!(info.text_bytes, 0);
    }

    #[test]
    fn completions_and_non_streamed_bodies_and_errors() {
        assert_eq!(
            parse_chunk(r#"{"choices":[{"text":"abc"}]}"#)
                .expect("ok")
                .text_bytes,
            3
        );
        let whole = r#"{"choices":[{"message":{"role":"assistant","content":"four"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        assert_eq!(parse_chunk(whole).expect("ok").text_bytes, 4);
        let err = parse_chunk(r#"{"error":{"message":"overloaded","code":503}}"#).expect("ok");
        assert_eq!(err.error.as_deref(), Some("overloaded"));
        assert!(parse_chunk("{not json").is_err());
        let two = r#"{"choices":[{"text":"ab"},{"delta":{"content":"c\"d"}}]}"#;
        assert_eq!(
            parse_chunk(two).expect("ok").text_bytes,
            5,
            "summed, escapes decoded"
        );
        assert_eq!(
            parse_chunk(r#"{"choices":null}"#).expect("ok").text_bytes,
            0
        );
        assert!(parse_chunk(r#"{"choices":{"text":"a"}}"#).is_err());
    }

    #[test]
    fn bodies_carry_stream_options_and_extra_fields() {
        let mut extra = serde_json::Map::new();
        extra.insert("ignore_eos".into(), true.into());
        extra.insert("max_tokens".into(), 7.into());
        let body: serde_json::Value = serde_json::from_slice(&request_body(
            EndpointType::Chat,
            "m",
            "hi there",
            32,
            true,
            &extra,
        ))
        .expect("json");
        assert_eq!(body["messages"][0]["content"], "hi there");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["max_tokens"], 7, "extra fields override");
        let body: serde_json::Value = serde_json::from_slice(&request_body(
            EndpointType::Completions,
            "m",
            "p",
            4,
            false,
            &Default::default(),
        ))
        .expect("json");
        assert_eq!(body["prompt"], "p");
        assert!(body.get("stream_options").is_none());
    }
}
