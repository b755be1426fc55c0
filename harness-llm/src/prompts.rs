//! Prompts of an exact token count under a real tokenizer: a built-in tiktoken encoding, or
//! any Hugging Face `tokenizer.json` file (read from disk; nothing is downloaded).
//!
//! A prompt is a run of space-led common words, each of which is one token in the encoding
//! (checked when the synthesiser is built). BPE pre-tokenisation splits text at such word
//! boundaries, so `n` words are exactly `n` tokens; the tests check it with the tokenizer.
//! Words are drawn from a seeded generator per request, so prompts differ (no accidental
//! prefix-cache hits) and a run repeats exactly. The encoding's tables (tens of MB) are
//! loaded only to choose the words, then dropped.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tiktoken_rs::CoreBPE;

use crate::error::{Error, Result};

const WORDS: &str = "the of and to in is was for that on with as by at from his her they this \
be are or an but not were which have had one all their there been has more when who will no \
if out so said what up its about into than them can only other new some could time these two \
may then do first any my now such like our over man me even most made after also did many \
before must through back years where much your way well down should because each just those \
people how too little state good very make world still own see men work long get here between \
both life being under never day same another know while last might us great old year off come \
since against go came right used take three small house few number part place point case week \
company system program question government during home water room mother area money story fact \
month lot study book eye job word business issue side kind head far black long both little";

/// Builds prompts of an exact token count.
#[derive(Clone)]
pub struct PromptSynth {
    encoding: String,
    words: Vec<&'static str>,
}

impl std::fmt::Debug for PromptSynth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptSynth")
            .field("encoding", &self.encoding)
            .field("words", &self.words.len())
            .finish()
    }
}

/// The encodings built in: `cl100k_base` (the default) and `o200k_base`.
pub const ENCODINGS: [&str; 2] = ["cl100k_base", "o200k_base"];

impl PromptSynth {
    /// A synthesiser for a built-in encoding.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] naming the known encodings when `encoding` is not one.
    pub fn new(encoding: &str) -> Result<Self> {
        let bpe = load(encoding)?;
        let mut words: Vec<&'static str> = WORDS
            .split_whitespace()
            .filter(|w| bpe.encode_ordinary(&format!(" {w}")).len() == 1)
            .collect();
        words.sort_unstable();
        words.dedup();
        if words.len() < 64 {
            return Err(Error::tokenizer(
                encoding,
                "too few single-token words",
                None,
            ));
        }
        Ok(PromptSynth {
            encoding: encoding.to_owned(),
            words,
        })
    }

    /// A synthesiser for a Hugging Face `tokenizer.json` file. Its name is
    /// `tokenizer.json:<path>`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] naming the file when it cannot be read, or when the tokenizer
    /// does not split text at spaces (so a prompt of exact length cannot be built from
    /// words).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        #[cfg(feature = "hf-tokenizers")]
        return Self::from_tokenizer(&HfTokenizer::open(path)?, path);
        #[cfg(not(feature = "hf-tokenizers"))]
        Err(Error::tokenizer(
            path.display().to_string(),
            "this program was built without harness-llm's `hf-tokenizers` feature; \
             use a built-in encoding (`tokenizer: {name: cl100k_base}`)",
            None,
        ))
    }

    #[cfg(feature = "hf-tokenizers")]
    fn from_tokenizer(tok: &HfTokenizer, path: &std::path::Path) -> Result<Self> {
        let mut words: Vec<&'static str> = WORDS
            .split_whitespace()
            .filter(|w| tok.count(&format!(" {w}")).is_ok_and(|n| n == 1))
            .collect();
        words.sort_unstable();
        words.dedup();
        if words.len() < 16 {
            return Err(Error::tokenizer(
                path.display().to_string(),
                format!(
                    "too few common English words are one token each ({})",
                    words.len()
                ),
                None,
            ));
        }
        let s = PromptSynth {
            encoding: format!("tokenizer.json:{}", path.display()),
            words,
        };
        // Word boundaries must be token boundaries: check on a long sample.
        let sample = s.prompt(512, 1);
        let n = tok.count(&sample)?;
        if n != 512 {
            return Err(Error::tokenizer(
                path.display().to_string(),
                format!(
                    "512 single-token words encode to {n} tokens; this tokenizer merges across spaces"
                ),
                None,
            ));
        }
        Ok(s)
    }

    /// The encoding's name.
    pub fn encoding(&self) -> &str {
        &self.encoding
    }

    /// A prompt of exactly `tokens` tokens, determined by `seed`.
    pub fn prompt(&self, tokens: u32, seed: u64) -> String {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut out = String::with_capacity(tokens as usize * 6);
        for _ in 0..tokens {
            out.push(' ');
            out.push_str(self.words[rng.random_range(0..self.words.len())]);
        }
        out
    }
}

/// Counts tokens under the experiment's tokenizer: for files whose lengths are measured
/// once (conversations), not for hot paths.
pub struct TokenCounter {
    count: Box<dyn Fn(&str) -> usize + Send + Sync>,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter").finish_non_exhaustive()
    }
}

impl TokenCounter {
    /// A counter for a built-in encoding (blocking: loads its tables).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] when `encoding` is not built in.
    pub fn new(encoding: &str) -> Result<Self> {
        let bpe = load(encoding)?;
        Ok(TokenCounter {
            count: Box::new(move |t| bpe.encode_ordinary(t).len()),
        })
    }

    /// A counter for a `tokenizer.json` file (blocking: reads it).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] when the file cannot be read, or this program was built without
    /// the `hf-tokenizers` feature.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        #[cfg(feature = "hf-tokenizers")]
        {
            let tok = HfTokenizer::open(path)?;
            Ok(TokenCounter {
                count: Box::new(move |t| tok.count(t).unwrap_or(0)),
            })
        }
        #[cfg(not(feature = "hf-tokenizers"))]
        Err(Error::tokenizer(
            path.display().to_string(),
            "this program was built without harness-llm's `hf-tokenizers` feature",
            None,
        ))
    }

    /// Tokens in `text`, without special tokens.
    pub fn count(&self, text: &str) -> usize {
        (self.count)(text)
    }
}

/// Loads a built-in encoding (not a process-wide singleton: dropped after use).
fn load(encoding: &str) -> Result<CoreBPE> {
    match encoding {
        "cl100k_base" => tiktoken_rs::cl100k_base(),
        "o200k_base" => tiktoken_rs::o200k_base(),
        _ => {
            return Err(Error::tokenizer(
                encoding,
                format!("unknown encoding; built in: {}", ENCODINGS.join(", ")),
                None,
            ));
        }
    }
    .map_err(|e| Error::tokenizer(encoding, "cannot load the encoding", Some(e.into())))
}

/// A Hugging Face tokenizer read from a `tokenizer.json` file.
#[cfg(feature = "hf-tokenizers")]
pub(crate) struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    path: std::path::PathBuf,
}

#[cfg(feature = "hf-tokenizers")]
impl HfTokenizer {
    /// Reads `path`.
    pub(crate) fn open(path: &std::path::Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            Error::tokenizer(
                path.display().to_string(),
                "not a readable tokenizer.json",
                Some(e),
            )
        })?;
        Ok(HfTokenizer {
            inner,
            path: path.to_owned(),
        })
    }

    /// Tokens in `text`, without special tokens.
    pub(crate) fn count(&self, text: &str) -> Result<usize> {
        self.inner
            .encode(text, false)
            .map(|e| e.len())
            .map_err(|e| {
                Error::tokenizer(self.path.display().to_string(), "encoding failed", Some(e))
            })
    }
}

/// Tokens in `text` under a built-in encoding. Loads the encoding each call: for checks,
/// not for hot paths.
///
/// # Errors
/// [`Error::Tokenizer`] when `encoding` is not built in.
pub fn count_tokens(encoding: &str, text: &str) -> Result<usize> {
    Ok(load(encoding)?.encode_ordinary(text).len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_have_exactly_the_requested_tokens_in_every_encoding() {
        for enc in ENCODINGS {
            let s = PromptSynth::new(enc).expect("encoding");
            let bpe = load(enc).expect("encoding");
            assert_eq!(count_tokens(enc, " the cat").expect("count"), 2);
            for (n, seed) in [(1, 1), (2, 2), (17, 3), (128, 4), (1000, 5), (8192, 6)] {
                let p = s.prompt(n, seed);
                assert_eq!(
                    bpe.encode_ordinary(&p).len(),
                    n as usize,
                    "{enc}: {n} tokens"
                );
                assert_eq!(p.split_whitespace().count(), n as usize);
            }
        }
    }

    #[test]
    fn prompts_repeat_with_the_seed_and_differ_across_seeds() {
        let s = PromptSynth::new("cl100k_base").expect("encoding");
        assert_eq!(s.prompt(64, 9), s.prompt(64, 9));
        assert_ne!(s.prompt(64, 9), s.prompt(64, 10));
        assert!(
            PromptSynth::new("gpt2-ish")
                .expect_err("unknown")
                .to_string()
                .contains("cl100k_base")
        );
    }
}
