//! Prompts under a Hugging Face `tokenizer.json` given by path: a byte-level BPE tokenizer is
//! trained here on generated text and saved (nothing is downloaded), then used like any
//! model's tokenizer file.

use std::path::{Path, PathBuf};

use harness_llm::prompts::PromptSynth;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::BpeTrainer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// Trains a small byte-level BPE tokenizer (GPT-2 style) and writes its tokenizer.json.
fn train(dir: &Path) -> PathBuf {
    let words = "the of and to in is was for that on with as by at from his her they this be \
                 are or an but not were which have had one all their there been has more when \
                 who will no if out so said what up its about into than them can only other new \
                 some could time these two may then do first any my now such like our over man";
    let corpus = dir.join("corpus.txt");
    let mut text = String::new();
    for i in 0..400 {
        for (j, w) in words.split_whitespace().enumerate() {
            if (i + j) % 3 != 0 {
                text.push(' ');
                text.push_str(w);
            }
        }
        text.push_str(" tokenization of numbers 12345 and symbols!?\n");
    }
    std::fs::write(&corpus, text).expect("corpus");
    let mut tokenizer = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default()));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(600)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tokenizer
        .train_from_files(&mut trainer, vec![corpus.display().to_string()])
        .expect("train");
    let out = dir.join("tokenizer.json");
    tokenizer.save(&out, false).expect("save");
    out
}

#[test]
fn prompts_have_exactly_isl_tokens_under_a_tokenizer_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = train(dir.path());
    let synth = PromptSynth::from_file(&path).expect("synthesiser");
    assert!(synth.encoding().starts_with("tokenizer.json:"));
    let tok = tokenizers::Tokenizer::from_file(&path).expect("load");
    for (n, seed) in [(1u32, 1u64), (7, 2), (128, 3), (2048, 4)] {
        let prompt = synth.prompt(n, seed);
        let ids = tok.encode(prompt.as_str(), false).expect("encode");
        assert_eq!(ids.len(), n as usize, "{n} tokens");
    }
}

#[test]
fn unusable_tokenizer_files_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.json");
    let e = PromptSynth::from_file(&missing).expect_err("missing");
    assert!(e.to_string().contains("nope.json"), "{e}");
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"not\": \"a tokenizer\"}").expect("write");
    let e = PromptSynth::from_file(&junk).expect_err("junk");
    assert!(
        matches!(&e, harness_llm::Error::Tokenizer { name, .. } if name.ends_with("junk.json")),
        "{e:?}"
    );
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    // The tokenizer library's own error is kept as the source, not flattened.
    assert!(std::error::Error::source(&e).is_some(), "{e:?}");
}

/// Shared-prefix prompts and trace prompts are exact in tokens under a tokenizer.json too:
/// a prefix, a question, or a run of hash-id blocks each encode to their own count, and so
/// does their concatenation.
#[test]
fn workload_prompts_are_exact_under_a_tokenizer_json() {
    use harness_llm::workload::{SharedPrefix, Trace};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = train(dir.path());
    let synth = PromptSynth::from_file(&path).expect("synthesiser");
    let tok = tokenizers::Tokenizer::from_file(&path).expect("load");
    let count = |p: &str| tok.encode(p, false).expect("encode").len() as u64;
    let w = SharedPrefix::new(3, 4, 300);
    for i in 0..12 {
        let (prompt, n) = w.prompt(&synth, 5, i, 37);
        assert_eq!(n, 337);
        assert_eq!(count(&prompt), 337, "request {i}");
    }
    let trace = Trace::parse(&Trace::synthetic_jsonl(20, 10.0, 64, 3), "gen", 64).expect("trace");
    for (i, e) in trace.entries().iter().enumerate() {
        let (prompt, n, _) = trace.prompt(&synth, 9, i as u64).expect("entry");
        assert_eq!(n, u64::from(e.input_length));
        assert_eq!(count(&prompt), n, "trace request {i}");
    }
}
