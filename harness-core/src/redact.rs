//! Keeping secrets out of stored runs: the values of API keys, tokens and passwords given
//! through the environment or the experiment are replaced by [`REDACTED`] in every text
//! object a run writes (`experiment.yaml`, the manifest, logs, records).
//!
//! [`RunContext::new`](crate::RunContext::new) wraps the run's store in a [`RedactingStore`]
//! with [`Secrets::of_experiment`], so steps need not think about it.
//!
//! ```
//! use harness_core::redact::{Secrets, REDACTED};
//! let mut secrets = Secrets::default();
//! secrets.add("sk-live-0123456789");
//! assert_eq!(secrets.redact_str("Bearer sk-live-0123456789"), format!("Bearer {REDACTED}"));
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::Experiment;
use crate::error::Result;
use crate::store::{ArtifactKey, ArtifactMeta, ArtifactStore};

/// What a secret is replaced with: a plain scalar in YAML and a plain string in JSON, so a
/// redacted file still parses.
pub const REDACTED: &str = "<redacted>";

/// Values shorter than this are not treated as secrets: replacing `true`, `us-east-1` or a
/// port everywhere would garble every file and hide nothing.
const MIN_SECRET_LEN: usize = 8;

/// Whether a setting, header or environment variable of this name holds a secret, judged by
/// its words (split at `_`, `-`, `.`): a word `secret`, `password`, `passwd`, `credential(s)`,
/// `authorization`, `cookie` or `apikey` anywhere (`AWS_SECRET_ACCESS_KEY`, `Authorization`);
/// a last word `key`, `token` or `pat` (`x-api-key`, `HF_TOKEN`, `account_key`); or `access
/// key` (`access_key_id`). Tokenizer settings (`TOKENIZER_PATH`) and counts (`max_tokens`)
/// are not secrets.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(['_', '-', '.'])
        .filter(|w| !w.is_empty())
        .collect();
    let anywhere = [
        "secret",
        "password",
        "passwd",
        "credential",
        "credentials",
        "authorization",
        "cookie",
        "apikey",
    ];
    words.iter().any(|w| anywhere.contains(w))
        || words
            .last()
            .is_some_and(|w| ["key", "token", "pat"].contains(w))
        || words.windows(2).any(|p| p == ["access", "key"])
}

/// A set of secret values.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Longest first, so a secret that contains another is replaced whole.
    values: Vec<String>,
}

impl Secrets {
    /// Adds a secret value (and its JSON-escaped form when that differs). Values shorter
    /// than eight characters are ignored.
    pub fn add(&mut self, value: impl Into<String>) {
        let value = value.into();
        if value.len() < MIN_SECRET_LEN {
            return;
        }
        if let Ok(quoted) = serde_json::to_string(&value) {
            let escaped = &quoted[1..quoted.len() - 1];
            if escaped != value {
                self.values.push(escaped.to_owned());
            }
        }
        self.values.push(value);
        self.values
            .sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        self.values.dedup();
    }

    /// The secrets of a run of `exp`: `storage.options` and `load.headers` values whose
    /// names look secret, the value of the variable named by `load.api_key_env`, and every
    /// environment variable whose name looks secret (`AWS_SECRET_ACCESS_KEY`, `HF_TOKEN`, ...).
    pub fn of_experiment(exp: &Experiment) -> Self {
        let mut s = Secrets::default();
        for (k, v) in exp.storage.options.iter().chain(exp.load.headers.iter()) {
            if is_secret_name(k) {
                s.add(v.clone());
                // `Bearer <token>`: the token alone too.
                if let Some((_, token)) = v.split_once(' ') {
                    s.add(token.trim().to_owned());
                }
            }
        }
        if let Some(var) = &exp.load.api_key_env
            && let Ok(v) = std::env::var(var)
        {
            s.add(v);
        }
        s.add_environment();
        s
    }

    /// Adds every environment variable whose name looks secret.
    pub fn add_environment(&mut self) {
        for (k, v) in std::env::vars_os() {
            if let (Some(k), Some(v)) = (k.to_str(), v.to_str())
                && is_secret_name(k)
            {
                self.add(v.to_owned());
            }
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact_bytes(text.as_bytes()) {
            // Secrets are whole UTF-8 strings, so replacing them keeps the text valid.
            Some(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
            None => Cow::Borrowed(text),
        }
    }

    /// `data` with every whole occurrence of a secret replaced, or `None` when it holds
    /// none. Whole: a secret that begins (ends) with a letter or digit is not replaced
    /// where a letter or digit comes right before (after) it, so `12345678` stays inside a
    /// timestamp and `abcdefgh` inside a longer word.
    pub fn redact_bytes(&self, data: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for secret in &self.values {
            let current = out.as_deref().unwrap_or(data);
            let finder = memchr::memmem::Finder::new(secret.as_bytes());
            let word = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
            let (first, last) = (secret.as_bytes().first(), secret.as_bytes().last());
            let whole = |hit: &usize| {
                let before = hit.checked_sub(1).and_then(|i| current.get(i));
                let after = current.get(hit + secret.len());
                let glued_before = word(first) && word(before);
                let glued_after = word(last) && word(after);
                !(glued_before || glued_after)
            };
            let mut hits = finder.find_iter(current).filter(whole).peekable();
            if hits.peek().is_none() {
                continue;
            }
            let mut next = Vec::with_capacity(current.len());
            let mut at = 0;
            for hit in hits {
                if hit < at {
                    continue;
                }
                next.extend_from_slice(&current[at..hit]);
                next.extend_from_slice(REDACTED.as_bytes());
                at = hit + secret.len();
            }
            next.extend_from_slice(&current[at..]);
            out = Some(next);
        }
        out
    }
}

/// Whether an object is text, so replacing bytes in it cannot corrupt it: by its extension,
/// or because it is valid UTF-8 (parquet and images are not).
fn is_text(key: &ArtifactKey, data: &[u8]) -> bool {
    let name = key.file_name();
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    matches!(
        ext.as_deref(),
        Some("json" | "jsonl" | "yaml" | "yml" | "log" | "txt" | "md" | "html" | "csv" | "tsv")
    ) || std::str::from_utf8(data).is_ok()
}

/// A store that redacts [`Secrets`] from every text object written through it.
#[derive(Debug, Clone)]
pub struct RedactingStore {
    inner: Arc<dyn ArtifactStore>,
    secrets: Arc<Secrets>,
}

impl RedactingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ArtifactStore>, secrets: Secrets) -> Self {
        RedactingStore {
            inner,
            secrets: Arc::new(secrets),
        }
    }

    fn clean(&self, key: &ArtifactKey, data: Bytes) -> Bytes {
        if self.secrets.is_empty() || !is_text(key, &data) {
            return data;
        }
        match self.secrets.redact_bytes(&data) {
            Some(clean) => Bytes::from(clean),
            None => data,
        }
    }
}

#[async_trait]
impl ArtifactStore for RedactingStore {
    async fn put(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
        self.inner.put(key, self.clean(key, data)).await
    }
    async fn put_if_absent(&self, key: &ArtifactKey, data: Bytes) -> Result<()> {
        self.inner.put_if_absent(key, self.clean(key, data)).await
    }
    async fn get(&self, key: &ArtifactKey) -> Result<Bytes> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &ArtifactKey) -> Result<Vec<ArtifactMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &ArtifactKey) -> Result<()> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Puts secrets back into a stored (redacted) experiment: wherever a string in `stored`
/// holds [`REDACTED`], the string at the same path in `current` (the experiment file in hand,
/// or `null`) takes its place. Returns the paths that stay redacted, e.g. `load.headers.Authorization`.
pub fn restore_redacted(
    stored: &mut serde_json::Value,
    current: &serde_json::Value,
) -> Vec<String> {
    fn walk(
        stored: &mut serde_json::Value,
        current: Option<&serde_json::Value>,
        path: &mut Vec<String>,
        left: &mut Vec<String>,
    ) {
        use serde_json::Value;
        match stored {
            Value::String(s) if s.contains(REDACTED) => match current {
                Some(Value::String(c)) => *s = c.clone(),
                _ => left.push(path.join(".")),
            },
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    path.push(k.clone());
                    walk(v, current.and_then(|c| c.get(k)), path, left);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    path.push(i.to_string());
                    walk(v, current.and_then(|c| c.get(i)), path, left);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut left = Vec::new();
    walk(stored, Some(current), &mut Vec::new(), &mut left);
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for n in [
            "Authorization",
            "x-api-key",
            "AWS_SECRET_ACCESS_KEY",
            "access_key_id",
            "HF_TOKEN",
            "password",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "GITHUB_TOKEN",
            "OPENAI_API_KEY",
            "AWS_SESSION_TOKEN",
            "azure_storage_account_key",
            "client_secret",
            "Cookie",
            "DB_PASSWORD",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "endpoint",
            "region",
            "allow_http",
            "Content-Type",
            "PATH",
            "TOKENIZER_PATH",
            "HARNESS_TOKENIZER",
            "max_tokens",
            "token_source",
            "KEYBOARD",
            "monkey",
        ] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    #[test]
    fn only_whole_occurrences_of_long_enough_values_are_replaced() {
        let mut s = Secrets::default();
        s.add("12345678");
        s.add("abcdefgh");
        s.add("seven77");
        // Inside a longer number or word: not the secret.
        assert_eq!(s.redact_str("t=1765123456789012"), "t=1765123456789012");
        assert_eq!(s.redact_str("xabcdefghx"), "xabcdefghx");
        // Standing alone, quoted, after `=` or a space: the secret.
        assert_eq!(
            s.redact_str("pin=12345678, \"abcdefgh\" and abcdefgh."),
            format!("pin={REDACTED}, \"{REDACTED}\" and {REDACTED}.")
        );
        // Under eight characters: never a secret.
        assert_eq!(s.redact_str("seven77"), "seven77");
    }

    #[test]
    fn replaces_every_occurrence_and_escaped_forms() {
        let mut s = Secrets::default();
        s.add("abc\"def123");
        s.add("short");
        let json =
            serde_json::to_string(&serde_json::json!({"k": "abc\"def123", "j": "x abc\"def123"}))
                .expect("test");
        let clean = s.redact_str(&json);
        assert!(!clean.contains("def123"), "{clean}");
        assert_eq!(clean.matches(REDACTED).count(), 2);
        // Too short to be a secret: left alone.
        assert_eq!(s.redact_str("short"), "short");
        assert!(s.redact_bytes(b"nothing here").is_none());
    }

    #[tokio::test]
    async fn store_redacts_text_but_not_binary() {
        let mem = crate::MemoryStore::new();
        let mut s = Secrets::default();
        s.add("hunter2-secret");
        let store = RedactingStore::new(Arc::new(mem.clone()), s);
        let text = ArtifactKey::new("a/log.txt").expect("test");
        store
            .put(&text, "pw=hunter2-secret".into())
            .await
            .expect("test");
        assert_eq!(
            mem.get(&text).await.expect("test"),
            format!("pw={REDACTED}")
        );
        let bin = ArtifactKey::new("a/data.parquet").expect("test");
        let mut data = vec![0xff, 0xfe];
        data.extend_from_slice(b"hunter2-secret");
        store.put(&bin, data.clone().into()).await.expect("test");
        assert_eq!(mem.get(&bin).await.expect("test"), data);
    }

    #[test]
    fn restores_from_the_current_experiment() {
        let mut stored = serde_json::json!({"load": {"headers": {"Authorization": REDACTED, "X": "1"}},
            "storage": {"options": {"secret_access_key": REDACTED}}});
        let current = serde_json::json!({"load": {"headers": {"Authorization": "Bearer abc"}}});
        let left = restore_redacted(&mut stored, &current);
        assert_eq!(stored["load"]["headers"]["Authorization"], "Bearer abc");
        assert_eq!(left, vec!["storage.options.secret_access_key".to_owned()]);
    }
}
