//! How many tokens the index's passages make with a reader's tokenizer: each file is read as
//! `bertqa index` reads it, cut into passages, and every passage tokenized (no special tokens).
//! Prints, per tokenizer, the number of passages, the median, 99th percentile and largest token
//! count, and how many passages would not fit one 384-token window beside a question of 64
//! tokens (384 − 64 − 3 special tokens = 317), the size the passage bounds aim at.
//!
//! `cargo run --release --example passage_tokens -- FILE... -- TOKENIZER.json...`

use std::path::Path;

use bertqa::index::documents::{read_documents, FileKind};
use bertqa::index::passages::split_passages;

/// Tokens a passage may have to fit one window of 384 beside a 64-token question.
const WINDOW_CONTEXT: usize = 384 - 64 - 3;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: passage_tokens FILE... -- TOKENIZER.json...";
    let split = args.iter().position(|a| a == "--").ok_or(usage)?;
    let (files, tokenizers) = (&args[..split], &args[split + 1..]);
    if files.is_empty() || tokenizers.is_empty() {
        return Err(usage.into());
    }
    let mut passages = Vec::new();
    for file in files {
        let kind = FileKind::from_extension(Path::new(file))
            .ok_or_else(|| format!("{file}: not a .txt, .md, .jsonl or .json file"))?;
        let bytes = std::fs::read(file)?;
        let documents = read_documents(file, kind, &bytes).map_err(|e| format!("{file}: {e:?}"))?;
        for document in documents {
            for span in split_passages(&document.text) {
                passages.push(document.text[span.bytes].to_string());
            }
        }
    }
    for path in tokenizers {
        let mut tokenizer = tokenizers::Tokenizer::from_file(path)?;
        // The passage alone, whole: no window cut, no padding.
        tokenizer.with_truncation(None)?.with_padding(None);
        let mut counts = passages
            .iter()
            .map(|p| Ok(tokenizer.encode(p.as_str(), false)?.len()))
            .collect::<Result<Vec<usize>, tokenizers::Error>>()?;
        counts.sort_unstable();
        let at = |q: f64| counts[((counts.len() - 1) as f64 * q).round() as usize];
        let over = counts.iter().filter(|&&n| n > WINDOW_CONTEXT).count();
        println!(
            "{path}: {} passages, tokens median {} / p99 {} / max {}; over {WINDOW_CONTEXT}: {over}",
            counts.len(),
            at(0.5),
            at(0.99),
            at(1.0),
        );
    }
    Ok(())
}
