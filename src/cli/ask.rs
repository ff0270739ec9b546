//! `bertqa ask`: answer questions about a passage, or every line of a JSONL file.

use std::io::Write;
use std::path::{Path, PathBuf};

use bertqa::pipeline::Prepared;
use bertqa::{Answer, LoadOptions, QaParams, QaPipeline, QaRequest};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{jsonl, output, CliError, CliResult, CommonArgs};

#[derive(Args, Debug)]
pub struct AskArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    engine: super::EngineArgs,
    #[command(flatten)]
    collection: super::collection::CollectionArgs,
    /// A question (repeat for several questions about the same context).
    #[arg(
        long,
        short = 'q',
        required_unless_present = "input",
        conflicts_with = "input"
    )]
    question: Vec<String>,
    /// The passage to search.
    #[arg(long, short = 'c', conflicts_with_all = ["context_file", "input", "index"])]
    context: Option<String>,
    /// Read the passage from a UTF-8 file.
    #[arg(long, conflicts_with_all = ["input", "index"])]
    context_file: Option<PathBuf>,
    /// JSONL file, one `{"id"?, "question", "context", "params"?}` per line; writes one
    /// `{"id", "answers"}` line per input.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Number of answers per question.
    #[arg(long)]
    top_k: Option<usize>,
    /// Longest answer, in tokens (default 15).
    #[arg(long)]
    max_answer_len: Option<usize>,
    /// Window length in tokens (default min(model max, 384)).
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Overlap between windows in tokens (default min(max_seq_len/2, 128)).
    #[arg(long)]
    doc_stride: Option<usize>,
    /// Also offer "no answer" (SQuAD 2.0 models).
    #[arg(long)]
    handle_impossible_answer: bool,
    /// Keep token boundaries instead of widening answers to whole words.
    #[arg(long)]
    no_align_to_words: bool,
    /// Print one JSON array of answers per question.
    #[arg(long)]
    json: bool,
    /// Windows per model call.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Longest context accepted, in characters.
    #[arg(long, default_value_t = bertqa::pipeline::DEFAULT_MAX_CONTEXT_CHARS)]
    max_context_chars: usize,
}

impl AskArgs {
    fn params(&self) -> QaParams {
        QaParams {
            top_k: self.top_k,
            max_answer_len: self.max_answer_len,
            max_seq_len: self.max_seq_len,
            doc_stride: self.doc_stride,
            max_question_len: None,
            handle_impossible_answer: self.handle_impossible_answer.then_some(true),
            align_to_words: self.no_align_to_words.then_some(false),
        }
    }
}

/// Reads a UTF-8 text file; a decoding error names the byte offset.
pub fn read_utf8(path: &PathBuf) -> CliResult<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|e| {
        CliError::usage(format!(
            "{} is not valid UTF-8 (invalid byte at offset {}); convert it to UTF-8 first",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    #[serde(default)]
    id: Option<serde_json::Value>,
    question: String,
    context: String,
    #[serde(default)]
    params: QaParams,
}

#[derive(Serialize)]
struct OutputLine<'a> {
    id: serde_json::Value,
    answers: &'a [Answer],
}

pub fn run(args: AskArgs) -> CliResult {
    if args.collection.index.is_some() {
        let inputs = super::collection::AskInputs {
            common: &args.common,
            engine: &args.engine,
            questions: &args.question,
            input: args.input.as_deref(),
            params: args.params(),
            json: args.json,
            batch_size: args.batch_size,
        };
        return super::collection::ask(&args.collection, inputs);
    }
    args.common.init();
    // Validate cheap inputs before the (slow) model load.
    let context = match (&args.context, &args.context_file) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(path)) => Some(read_utf8(path)?),
        (None, None) => None,
    };
    if args.input.is_none() {
        if context.is_none() {
            return Err(CliError::usage(
                "give a passage with --context or --context-file",
            ));
        }
        for q in &args.question {
            if q.trim().is_empty() {
                return Err(CliError::usage("a --question is empty"));
            }
        }
        if context.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(CliError::usage("the context is empty"));
        }
    }
    let options = LoadOptions {
        hub: args.common.hub(),
        batch_size: args.batch_size,
        max_context_chars: args.max_context_chars,
        ..LoadOptions::default()
    };
    let options = args.engine.apply(options)?;
    let qa = QaPipeline::load(&args.common.model, &options)?;
    match (&args.input, context) {
        (Some(input), _) => run_jsonl(&qa, input),
        (None, Some(context)) => {
            let params = args.params();
            let requests: Vec<QaRequest> = args
                .question
                .iter()
                .map(|q| QaRequest {
                    question: q.clone(),
                    context: context.clone(),
                    params: params.clone(),
                })
                .collect();
            let answers = qa.answer(&requests)?;
            let mut out = std::io::stdout().lock();
            for (req, answers) in requests.iter().zip(&answers) {
                if args.json {
                    let line = serde_json::to_string(answers)
                        .map_err(|e| CliError::usage(e.to_string()))?;
                    writeln!(out, "{line}").map_err(io_err)?;
                } else {
                    output::print_human(&req.question, &context, answers);
                }
            }
            Ok(())
        }
        (None, None) => unreachable!("checked above"),
    }
}

fn io_err(e: std::io::Error) -> CliError {
    CliError {
        message: format!("writing output: {e}"),
        code: 1,
    }
}

/// Lines answered per model round: enough to batch windows well, few enough to stream.
const JSONL_CHUNK: usize = 32;

fn run_jsonl(qa: &QaPipeline, path: &Path) -> CliResult {
    let lines = jsonl::read_lines::<InputLine>(path)?;
    let mut out = std::io::stdout().lock();
    let mut chunk: Vec<(serde_json::Value, Prepared)> = Vec::new();
    let flush = |chunk: &mut Vec<(serde_json::Value, Prepared)>,
                 out: &mut std::io::StdoutLock|
     -> CliResult {
        let (ids, prepared): (Vec<_>, Vec<Prepared>) = chunk.drain(..).unzip();
        let logits = qa.run_prepared(&prepared, |_| {})?;
        for (id, (p, l)) in ids.into_iter().zip(prepared.iter().zip(&logits)) {
            let answers = &p.answers(l).answers;
            let line = serde_json::to_string(&OutputLine { id, answers })
                .map_err(|e| CliError::usage(e.to_string()))?;
            writeln!(out, "{line}").map_err(io_err)?;
        }
        Ok(())
    };
    for line in lines {
        let (lineno, parsed) = line?;
        let id = parsed.id.unwrap_or_else(|| serde_json::Value::from(lineno));
        let request = QaRequest {
            question: parsed.question,
            context: parsed.context,
            params: parsed.params,
        };
        // Tokenize now so that an error names the line.
        let prepared = qa
            .prepare(&request)
            .map_err(|e| CliError::usage(format!("{}:{lineno}: {e}", path.display())))?;
        chunk.push((id, prepared));
        if chunk.len() == JSONL_CHUNK {
            flush(&mut chunk, &mut out)?;
        }
    }
    flush(&mut chunk, &mut out)
}
