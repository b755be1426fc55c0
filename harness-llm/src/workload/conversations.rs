//! Conversations from a file, replayed as multi-turn sessions: the file's user turns are
//! sent, each with the history so far, the server's own replies in it; the file's assistant
//! replies only set how many tokens each turn asks for.
//!
//! Two formats, one conversation per line (JSON lines) or a JSON array of them:
//! * OpenAI messages: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}`
//! * ShareGPT: `{"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}]}`

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::prompts::TokenCounter;

/// One user turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Turn {
    /// What the user says.
    pub user: String,
    /// Its tokens under the experiment's tokenizer.
    pub user_tokens: u64,
    /// Output tokens to ask for: the file's reply's length; `None` when the conversation
    /// ends on this turn without a reply (the cell's OSL applies).
    pub output_tokens: Option<u32>,
}

/// One conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Conversation {
    /// The system prompt, sent first in every turn.
    pub system: Option<String>,
    /// Its tokens.
    pub system_tokens: u64,
    /// The user turns, in order.
    pub turns: Vec<Turn>,
}

/// The conversations of a file.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Conversations {
    items: Vec<Conversation>,
    /// The pause between a reply and the next turn.
    pub think_time: Duration,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    conversations: Option<Vec<RawShareGpt>>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct RawShareGpt {
    from: String,
    value: String,
}

impl Conversations {
    /// Reads a file (blocking); `tokens` counts under the experiment's tokenizer.
    ///
    /// # Errors
    /// As [`Conversations::parse`]; [`Error::Read`] when the file cannot be read.
    pub fn load(
        path: &std::path::Path,
        tokens: &TokenCounter,
        max_context: Option<u32>,
    ) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), tokens, max_context)
    }

    /// Parses JSON lines or a JSON array; `source` names them in errors.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `source:line` (`source: conversation N` in an array) for a
    /// conversation that is not one of the formats, has an unknown role, does not alternate
    /// user and assistant, has no user turn, or does not fit in `max_context`; or for a file
    /// without conversations.
    pub fn parse(
        text: &str,
        source: &str,
        tokens: &TokenCounter,
        max_context: Option<u32>,
    ) -> Result<Self> {
        let mut items = Vec::new();
        if text.trim_start().starts_with('[') {
            let all: Vec<serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| Error::invalid(format!("{source}:{}", e.line()), e.to_string()))?;
            for (i, v) in all.into_iter().enumerate() {
                let at = format!("{source}: conversation {}", i + 1);
                let raw: Raw =
                    serde_json::from_value(v).map_err(|e| Error::invalid(&at, e.to_string()))?;
                items.push(conversation(raw, &at, tokens, max_context)?);
            }
        } else {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let at = format!("{source}:{}", i + 1);
                let raw: Raw =
                    serde_json::from_str(line).map_err(|e| Error::invalid(&at, e.to_string()))?;
                items.push(conversation(raw, &at, tokens, max_context)?);
            }
        }
        if items.is_empty() {
            return Err(Error::invalid(source, "no conversations"));
        }
        Ok(Conversations {
            items,
            think_time: Duration::ZERO,
        })
    }

    /// The conversations.
    pub fn items(&self) -> &[Conversation] {
        &self.items
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The most turns of a conversation.
    pub fn max_turns(&self) -> u32 {
        self.items
            .iter()
            .map(|c| c.turns.len() as u32)
            .max()
            .unwrap_or(1)
    }
}

/// Who said a message, in either format's words.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    System,
    User,
    Assistant,
}

fn conversation(
    raw: Raw,
    at: &str,
    tokens: &TokenCounter,
    max_context: Option<u32>,
) -> Result<Conversation> {
    let messages: Vec<(String, String)> = match (raw.messages, raw.conversations) {
        (Some(m), None) => m.into_iter().map(|m| (m.role, m.content)).collect(),
        (None, Some(c)) => c.into_iter().map(|m| (m.from, m.value)).collect(),
        _ => {
            return Err(Error::invalid(
                at,
                "expected `messages` (OpenAI roles) or `conversations` (ShareGPT), one of them",
            ));
        }
    };
    let mut out = Conversation {
        system: None,
        system_tokens: 0,
        turns: Vec::new(),
    };
    let mut last: Option<Who> = None;
    // Tokens the history holds before the turn being read.
    let mut history = 0u64;
    for (k, (role, content)) in messages.into_iter().enumerate() {
        let who = match role.as_str() {
            "system" => Who::System,
            "user" | "human" => Who::User,
            "assistant" | "gpt" | "chatgpt" | "bing" | "bard" => Who::Assistant,
            other => {
                return Err(Error::invalid(
                    at,
                    format!(
                        "message {}: unknown role `{other}` (system, user or assistant; ShareGPT's human or gpt)",
                        k + 1
                    ),
                ));
            }
        };
        let n = tokens.count(&content) as u64;
        match (who, last) {
            (Who::System, None) => {
                out.system_tokens = n;
                out.system = Some(content);
                history += n;
            }
            (Who::User, None | Some(Who::System | Who::Assistant)) => {
                history += n;
                out.turns.push(Turn {
                    user: content,
                    user_tokens: n,
                    output_tokens: None,
                });
            }
            (Who::Assistant, Some(Who::User)) => {
                let turn = out.turns.len();
                if let (Some(max), Some(t)) = (max_context, out.turns.last_mut()) {
                    if history + n > u64::from(max) {
                        return Err(Error::invalid(
                            at,
                            format!(
                                "turn {turn} needs {} tokens (a history of {history} and a reply of {n}), beyond the model's context of {max} (model.max_context)",
                                history + n
                            ),
                        ));
                    }
                    t.output_tokens = Some(n.clamp(1, u64::from(u32::MAX)) as u32);
                } else if let Some(t) = out.turns.last_mut() {
                    t.output_tokens = Some(n.clamp(1, u64::from(u32::MAX)) as u32);
                }
                history += n;
            }
            (who, _) => {
                let name = match who {
                    Who::System => "a system message after the first message",
                    Who::User => "two user messages in a row",
                    Who::Assistant => "an assistant message that answers no user message",
                };
                return Err(Error::invalid(at, format!("message {}: {name}", k + 1)));
            }
        }
        last = Some(who);
    }
    if out.turns.is_empty() {
        return Err(Error::invalid(at, "the conversation has no user message"));
    }
    if let Some(max) = max_context
        && history > u64::from(max)
    {
        return Err(Error::invalid(
            at,
            format!(
                "the conversation holds {history} tokens, beyond the model's context of {max} (model.max_context)"
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> TokenCounter {
        TokenCounter::new("cl100k_base").expect("encoding")
    }

    #[test]
    fn both_formats_read_as_user_turns_with_reply_lengths() {
        let text = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi, how can I help"}, {"role": "user", "content": "Tell me a joke"}]}

{"id": "x", "conversations": [{"from": "human", "value": "one two"}, {"from": "gpt", "value": "three"}]}"#;
        let c = Conversations::parse(text, "c.jsonl", &counter(), None).expect("valid");
        assert_eq!(c.len(), 2);
        let a = &c.items()[0];
        assert_eq!(a.system.as_deref(), Some("Be brief."));
        assert_eq!(a.turns.len(), 2);
        assert_eq!(a.turns[0].user_tokens, 2);
        assert_eq!(a.turns[0].output_tokens, Some(6));
        assert_eq!(a.turns[1].output_tokens, None, "no reply in the file");
        assert_eq!(c.items()[1].turns[0].output_tokens, Some(1));
        assert_eq!(c.max_turns(), 2);
        let array = format!("[{}]", text.lines().next().expect("line"));
        assert_eq!(
            Conversations::parse(&array, "c.json", &counter(), None)
                .expect("array")
                .len(),
            1
        );
    }

    #[test]
    fn bad_conversations_are_located() {
        let bad = |text: &str, max: Option<u32>| {
            Conversations::parse(text, "c.jsonl", &counter(), max)
                .expect_err("bad")
                .to_string()
        };
        let ok = r#"{"messages": [{"role": "user", "content": "a b c d"}, {"role": "assistant", "content": "e f"}]}"#;
        let e = bad(
            &format!("{ok}\n{{\"messages\": [{{\"role\": \"user\"}}]}}"),
            None,
        );
        assert!(e.starts_with("c.jsonl:2") && e.contains("content"), "{e}");
        let e = bad(
            &format!("{ok}\n\n{{\"messages\": [{{\"role\": \"robot\", \"content\": \"x\"}}]}}"),
            None,
        );
        assert!(e.starts_with("c.jsonl:3") && e.contains("robot"), "{e}");
        let e = bad(
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}"#,
            None,
        );
        assert!(e.contains("message 2: two user messages"), "{e}");
        let e = bad(
            r#"{"messages": [{"role": "system", "content": "a"}]}"#,
            None,
        );
        assert!(e.contains("no user message"), "{e}");
        let e = bad(r#"{"turns": []}"#, None);
        assert!(e.contains("`messages`"), "{e}");
        let e = bad(ok, Some(5));
        assert!(
            e.starts_with("c.jsonl:1") && e.contains("beyond the model's context of 5"),
            "{e}"
        );
        Conversations::parse(ok, "c.jsonl", &counter(), Some(6)).expect("fits");
        assert!(bad("\n", None).contains("no conversations"));
        let e = bad("[{\"messages\": []}, 3]", None);
        assert!(e.contains("conversation 1"), "{e}");
    }
}
