//! `ask --index` and `eval --index`: questions over a collection of documents (an index made
//! by `bertqa index`) instead of one passage.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bertqa::index::answer::{DEFAULT_PASSAGES, DEFAULT_RETRIEVAL_WEIGHT, MAX_PASSAGES};
use bertqa::index::{AskOptions, DocumentAnswer, DocumentAnswers, Hit, Index};
use bertqa::squad::{self, SquadDataset, SquadExample};
use bertqa::{Answer, LoadOptions, QaParams, QaPipeline};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::json_files::{check_writable, write_json_atomically, Ordered};
use super::output::progress_bar;
use super::{jsonl, output, CliError, CliResult, CommonArgs, EngineArgs};

/// The options `ask` and `eval` take for answering over an index.
#[derive(Args, Debug, Clone)]
pub struct CollectionArgs {
    /// Answer over the documents of this index (made by `bertqa index`) instead of a passage.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Passages retrieved (BM25) and read per question.
    #[arg(long, requires = "index", default_value_t = DEFAULT_PASSAGES)]
    pub passages: usize,
    /// Weight of the passage's BM25 score against the reader's logits when ranking answers
    /// across passages (0: reader alone).
    #[arg(long, requires = "index", default_value_t = DEFAULT_RETRIEVAL_WEIGHT)]
    pub retrieval_weight: f32,
    /// Name each answer's file by its absolute path (by default, relative to the folder given
    /// to `bertqa index`, starting with that folder's name).
    #[arg(long, requires = "index")]
    pub absolute_paths: bool,
}

impl CollectionArgs {
    fn options(&self, params: QaParams) -> CliResult<AskOptions> {
        if params.top_k == Some(0) {
            return Err(CliError::usage("--top-k must be at least 1"));
        }
        if self.passages == 0 || self.passages > MAX_PASSAGES {
            return Err(CliError::usage(format!(
                "--passages must be from 1 to {MAX_PASSAGES}"
            )));
        }
        if !self.retrieval_weight.is_finite() || self.retrieval_weight < 0.0 {
            return Err(CliError::usage(
                "--retrieval-weight must be a number of at least 0",
            ));
        }
        Ok(AskOptions {
            passages: self.passages,
            retrieval_weight: self.retrieval_weight,
            params,
        })
    }
}

/// What `ask --index` needs from `ask`'s arguments.
pub struct AskInputs<'a> {
    pub common: &'a CommonArgs,
    pub engine: &'a EngineArgs,
    pub questions: &'a [String],
    pub input: Option<&'a Path>,
    pub params: QaParams,
    pub json: bool,
    pub batch_size: usize,
}

/// A line of `ask --index --input`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuestionLine {
    #[serde(default)]
    id: Option<Value>,
    question: String,
    #[serde(default)]
    params: QaParams,
}

#[derive(Serialize)]
struct OutputLine<'a> {
    id: Value,
    answers: &'a [DocumentAnswer],
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// Questions answered per round of `--input`: enough to batch windows well, few enough to
/// stream.
const QUESTIONS_PER_ROUND: usize = 32;

fn load_model(
    common: &CommonArgs,
    engine: &EngineArgs,
    batch_size: usize,
) -> CliResult<QaPipeline> {
    let options = LoadOptions {
        hub: common.hub(),
        batch_size,
        ..LoadOptions::default()
    };
    Ok(QaPipeline::load(&common.model, &engine.apply(options)?)?)
}

/// Opens the index and refuses an empty one before the model loads; answers name files
/// relative to the indexed folders.
pub fn open_index(dir: &Path) -> CliResult<Index> {
    open_index_with(dir, false)
}

/// [`open_index`], naming files by their absolute paths when `absolute_paths`.
fn open_index_with(dir: &Path, absolute_paths: bool) -> CliResult<Index> {
    let mut index = Index::open(dir)?;
    index.set_absolute_paths(absolute_paths);
    if index.stats().passages == 0 {
        return Err(CliError::usage(format!(
            "the index {} holds no passages; add documents with `bertqa index --index {} PATH...`",
            dir.display(),
            dir.display()
        )));
    }
    Ok(index)
}

/// `bertqa ask --index DIR`.
pub fn ask(args: &CollectionArgs, inputs: AskInputs) -> CliResult {
    inputs.common.init();
    let Some(dir) = &args.index else {
        return Err(CliError::usage("give the index with --index DIR"));
    };
    let options = args.options(inputs.params.clone())?;
    if inputs.input.is_none() && inputs.questions.iter().any(|q| q.trim().is_empty()) {
        return Err(CliError::usage("a --question is empty"));
    }
    let index = open_index_with(dir, args.absolute_paths)?;
    for question in inputs.questions {
        index.analyzer().question_terms(question)?;
    }
    let qa = load_model(inputs.common, inputs.engine, inputs.batch_size)?;
    if let Some(input) = inputs.input {
        return ask_jsonl(&qa, &index, &options, input);
    }
    let found = qa.answer_over(&index, inputs.questions, &options)?;
    let mut out = std::io::stdout().lock();
    for (question, found) in inputs.questions.iter().zip(&found) {
        for warning in &found.warnings {
            eprintln!("warning: {}", printable(warning));
        }
        if inputs.json {
            if let Some(reason) = &found.reason {
                eprintln!("note: {question:?}: no answer: {reason}");
            }
            let line = serde_json::to_string(&found.answers)
                .map_err(|e| CliError::usage(e.to_string()))?;
            writeln!(out, "{line}").map_err(write_err)?;
        } else {
            print_human(&mut out, question, found).map_err(write_err)?;
        }
    }
    Ok(())
}

fn write_err(e: std::io::Error) -> CliError {
    CliError {
        message: format!("writing output: {e}"),
        code: 1,
    }
}

/// Answers with their document, title, offsets and the passage around the answer.
fn print_human(
    out: &mut impl Write,
    question: &str,
    found: &DocumentAnswers,
) -> std::io::Result<()> {
    writeln!(out, "Q: {}", printable(question))?;
    if let Some(reason) = &found.reason {
        writeln!(out, "  (no answer: {reason})")?;
    }
    for (k, a) in found.answers.iter().enumerate() {
        let title = if a.title.is_empty() {
            &a.doc_id
        } else {
            &a.title
        };
        writeln!(
            out,
            "  {}. {:?}  score {:.4}  {}  chars {}..{}",
            k + 1,
            a.answer,
            a.score,
            printable(title),
            a.start,
            a.end
        )?;
        writeln!(
            out,
            "     {}  ({})",
            printable(&passage_excerpt(a)),
            printable(&a.path)
        )?;
    }
    Ok(())
}

/// The sentence of the passage around the answer, the answer marked.
fn passage_excerpt(a: &DocumentAnswer) -> String {
    let in_passage = Answer {
        score: a.score,
        start: a.start - a.passage.start,
        end: a.end - a.passage.start,
        answer: a.answer.clone(),
    };
    output::excerpt(&a.passage.text, &in_passage)
}

fn ask_jsonl(qa: &QaPipeline, index: &Index, options: &AskOptions, path: &Path) -> CliResult {
    let lines = jsonl::read_lines::<QuestionLine>(path)?;
    let mut out = std::io::stdout().lock();
    let mut round: Vec<(Value, QuestionLine)> = Vec::new();
    let mut flush = |round: &mut Vec<(Value, QuestionLine)>| -> CliResult {
        // Lines with their own parameters are answered on their own.
        for group in group_by_params(std::mem::take(round)) {
            let options = AskOptions {
                params: group[0].1.params.clone(),
                ..options.clone()
            };
            let questions: Vec<&str> = group.iter().map(|(_, l)| l.question.as_str()).collect();
            let found = qa.answer_over(index, &questions, &options)?;
            for ((id, _), found) in group.into_iter().zip(&found) {
                let line = serde_json::to_string(&OutputLine {
                    id,
                    answers: &found.answers,
                    reason: found.reason.as_deref(),
                    warnings: &found.warnings,
                })
                .map_err(|e| CliError::usage(e.to_string()))?;
                writeln!(out, "{line}").map_err(write_err)?;
            }
        }
        Ok(())
    };
    for line in lines {
        let (lineno, mut parsed) = line?;
        if parsed.question.trim().is_empty() {
            return Err(CliError::usage(format!(
                "{}:{lineno}: the question is empty",
                path.display()
            )));
        }
        if let Err(e) = index.analyzer().question_terms(&parsed.question) {
            return Err(CliError::usage(format!("{}:{lineno}: {e}", path.display())));
        }
        if parsed.params.top_k == Some(0) {
            return Err(CliError::usage(format!(
                "{}:{lineno}: params.top_k must be at least 1",
                path.display()
            )));
        }
        if parsed.params.top_k.is_none() {
            parsed.params.top_k = options.params.top_k;
        }
        let id = parsed.id.take().unwrap_or_else(|| Value::from(lineno));
        round.push((id, parsed));
        if round.len() == QUESTIONS_PER_ROUND {
            flush(&mut round)?;
        }
    }
    flush(&mut round)
}

/// Consecutive lines with the same parameters, in order.
fn group_by_params(lines: Vec<(Value, QuestionLine)>) -> Vec<Vec<(Value, QuestionLine)>> {
    let mut groups: Vec<Vec<(Value, QuestionLine)>> = Vec::new();
    for line in lines {
        match groups.last_mut() {
            Some(group) if group[0].1.params == line.1.params => group.push(line),
            _ => groups.push(vec![line]),
        }
    }
    groups
}

/// What `eval --index` needs from `eval`'s arguments.
pub struct EvalInputs<'a> {
    pub common: &'a CommonArgs,
    pub engine: &'a EngineArgs,
    pub data: &'a Path,
    pub predictions: Option<&'a Path>,
    pub batch_size: usize,
    pub json: bool,
    /// Window length and stride (`top_k` is refused: the first answer is the prediction).
    pub params: QaParams,
}

/// Questions answered per round of `eval --index` (progress and memory).
const EVAL_ROUND: usize = 64;

/// `bertqa eval --index DIR`: every question of a SQuAD file over the index, without its
/// paragraph; EM/F1 of the best answer, recall of the question's own paragraph among the
/// passages read, questions/s.
pub fn eval(args: &CollectionArgs, inputs: EvalInputs) -> CliResult {
    inputs.common.init();
    let Some(dir) = &args.index else {
        return Err(CliError::usage("give the index with --index DIR"));
    };
    let options = args.options(inputs.params.clone())?;
    let dataset = SquadDataset::from_file(inputs.data)?;
    if dataset.is_empty() {
        return Err(CliError::usage(format!(
            "{} has no questions",
            inputs.data.display()
        )));
    }
    if let Some(out) = inputs.predictions {
        check_writable(out)?;
    }
    let index = open_index_with(dir, args.absolute_paths)?;
    let qa = load_model(inputs.common, inputs.engine, inputs.batch_size)?;

    let started = Instant::now();
    let (predictions, found_own) = answer_dataset(&index, &qa, &dataset, &options)?;
    let seconds = started.elapsed().as_secs_f64();

    let texts: HashMap<String, String> = dataset
        .examples
        .iter()
        .zip(&predictions)
        .map(|(e, p)| (e.id.clone(), p.clone()))
        .collect();
    let metrics = squad::evaluate(&dataset, &texts, None);
    if let Some(path) = inputs.predictions {
        let entries = dataset
            .examples
            .iter()
            .zip(&predictions)
            .map(|(e, p)| (e.id.as_str(), Value::from(p.as_str())));
        write_json_atomically(path, &Ordered(entries.collect()))?;
    }
    let counts = (found_own, dataset.len());
    print_eval_report(&inputs, dir, &index, &options, &metrics, counts, seconds)
}

/// Answers every question of `dataset` over `index`, in rounds of [`EVAL_ROUND`]: the best
/// answer's text per question, and how many questions had their own paragraph among the
/// passages read.
fn answer_dataset(
    index: &Index,
    qa: &QaPipeline,
    dataset: &SquadDataset,
    options: &AskOptions,
) -> CliResult<(Vec<String>, usize)> {
    let progress = progress_bar(dataset.len());
    let mut predictions: Vec<String> = Vec::with_capacity(dataset.len());
    let mut found_own = 0usize;
    for round in dataset.examples.chunks(EVAL_ROUND) {
        let questions: Vec<&str> = round.iter().map(|e| e.question.as_str()).collect();
        let mut retrievals = Vec::with_capacity(questions.len());
        for (example, question) in round.iter().zip(&questions) {
            retrievals.push(match index.search(question, options.passages) {
                Ok(retrieval) => retrieval,
                // A question the index refuses (over the bounds) is answered with nothing;
                // the run goes on.
                Err(e @ bertqa::Error::InvalidInput(_)) => {
                    progress
                        .suspend(|| eprintln!("warning: question {}: {e}", printable(&example.id)));
                    bertqa::index::Retrieval::default()
                }
                Err(e) => return Err(e.into()),
            });
        }
        let found = qa.answer_retrieved(&questions, &retrievals, options)?;
        for warning in found.iter().flat_map(|f| &f.warnings) {
            progress.suspend(|| eprintln!("warning: {}", printable(warning)));
        }
        for ((example, found), retrieval) in round.iter().zip(&found).zip(&retrievals) {
            predictions.push(
                found
                    .answers
                    .first()
                    .map_or(String::new(), |a| a.answer.clone()),
            );
            found_own += usize::from(own_paragraph_read(example, &retrieval.hits));
        }
        progress.set_position(predictions.len() as u64);
    }
    progress.finish_and_clear();
    Ok((predictions, found_own))
}

/// Prints the scores of `eval --index`, as one JSON line with `--json`.
fn print_eval_report(
    inputs: &EvalInputs,
    dir: &Path,
    index: &Index,
    options: &AskOptions,
    metrics: &squad::SquadMetrics,
    (found_own, total): (usize, usize),
    seconds: f64,
) -> CliResult {
    let recall = 100.0 * found_own as f64 / total as f64;
    let rate = total as f64 / seconds.max(1e-9);
    let stats = index.stats();
    if inputs.json {
        let report = Ordered(vec![
            ("exact_match", Value::from(metrics.exact_match())),
            ("f1", Value::from(metrics.f1())),
            ("total", Value::from(total)),
            ("recall_at_k", Value::from(recall)),
            ("passages", Value::from(options.passages)),
            ("retrieval_weight", Value::from(options.retrieval_weight)),
            ("questions_per_second", Value::from(rate)),
            ("seconds", Value::from(seconds)),
            ("index_passages", Value::from(stats.passages)),
            ("data", Value::from(inputs.data.display().to_string())),
            ("index", Value::from(dir.display().to_string())),
            ("model", Value::from(inputs.common.model.as_str())),
        ]);
        let line = serde_json::to_string(&report).map_err(|e| CliError::usage(e.to_string()))?;
        println!("{line}");
    } else {
        println!(
            "{total} questions from {} over {} ({} passages), {} read per question",
            inputs.data.display(),
            dir.display(),
            stats.passages,
            options.passages
        );
        println!("  exact match  {:6.2}", metrics.exact_match());
        println!("  F1           {:6.2}", metrics.f1());
        println!(
            "  recall@{:<4} {recall:6.2}  (questions whose own paragraph was among the passages read)",
            options.passages
        );
        println!(
            "{total} questions in {seconds:.1} s ({rate:.2} questions/s), model {}",
            inputs.common.model
        );
    }
    Ok(())
}

/// Whether a passage of the question's own paragraph was among those read: a passage whose
/// text is the paragraph's at the passage's offsets.
fn own_paragraph_read(example: &SquadExample, hits: &[Hit]) -> bool {
    let context: Vec<char> = example.context.chars().collect();
    hits.iter().any(|h| {
        let p = &h.passage;
        context
            .get(p.start..p.end)
            .is_some_and(|c| c.iter().copied().eq(p.text.chars()))
    })
}

/// `text` for a terminal: control characters (escape sequences, carriage returns, newlines)
/// written as Rust escapes, so that a file name or title cannot drive the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain é"), "plain é");
        assert_eq!(
            printable("a\u{1b}]0;pwned\u{7}\r\nb\u{9b}"),
            "a\\u{1b}]0;pwned\\u{7}\\r\\nb\\u{9b}"
        );
    }
}
