//! `bertqa eval`: answer every question of a SQuAD file and score the answers with the official
//! SQuAD metric.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bertqa::evaluate::{self, Prediction};
use bertqa::squad::{SquadDataset, SquadMetrics, SquadVersion};
use bertqa::{LoadOptions, QaParams, QaPipeline};
use clap::Args;
use serde_json::Value;

use super::json_files::{check_writable, commit, write_error, write_temporary, Ordered};
use super::output::progress_bar;
use super::{CliError, CliResult, CommonArgs};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    engine: super::EngineArgs,
    #[command(flatten)]
    collection: super::collection::CollectionArgs,
    /// SQuAD v1.1 or v2.0 JSON file (questions and gold answers).
    #[arg(long)]
    data: PathBuf,
    /// Write the answers as the official predictions file, `{"question id": "answer"}`.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Write each question's no-answer probability, `{"question id": p}` (the official v2
    /// script's --na-prob-file).
    #[arg(long)]
    na_probs: Option<PathBuf>,
    /// The pipeline's top_k; its first answer is the prediction. Spans with the same text are
    /// merged among the candidates, so a larger pool can change which answer comes first
    /// (as in transformers).
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Window length in tokens (default: the pipeline's, min(model maximum, 384)).
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Overlap of consecutive windows in tokens (default: the pipeline's,
    /// min(max_seq_len / 2, 128)).
    #[arg(long)]
    doc_stride: Option<usize>,
    /// Windows per model call.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print one JSON object with the scores and timings.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> CliResult {
    if args.collection.index.is_some() {
        if args.na_probs.is_some() {
            return Err(CliError::usage(
                "--na-probs has no meaning with --index (every question gets an answer)",
            ));
        }
        if args.top_k != 1 {
            return Err(CliError::usage(
                "--top-k has no effect with --index (answers are ranked across passages and \
                 the first is the prediction); leave it out",
            ));
        }
        let inputs = super::collection::EvalInputs {
            common: &args.common,
            engine: &args.engine,
            data: &args.data,
            predictions: args.predictions.as_deref(),
            batch_size: args.batch_size,
            json: args.json,
            params: QaParams {
                max_seq_len: args.max_seq_len,
                doc_stride: args.doc_stride,
                ..QaParams::default()
            },
        };
        return super::collection::eval(&args.collection, inputs);
    }
    args.common.init();
    // Everything that can be checked cheaply is, before the model loads.
    let dataset = SquadDataset::from_file(&args.data)?;
    if dataset.is_empty() {
        return Err(CliError::usage(format!(
            "{} has no questions",
            args.data.display()
        )));
    }
    for out in [&args.predictions, &args.na_probs].into_iter().flatten() {
        check_writable(out)?;
    }
    let options = LoadOptions {
        hub: args.common.hub(),
        batch_size: args.batch_size,
        ..LoadOptions::default()
    };
    let options = args.engine.apply(options)?;
    let qa = QaPipeline::load(&args.common.model, &options)?;

    let started = Instant::now();
    let params = QaParams {
        top_k: Some(args.top_k),
        max_seq_len: args.max_seq_len,
        doc_stride: args.doc_stride,
        ..QaParams::default()
    };
    let params = evaluate::dataset_params(&dataset, &params);
    let progress = progress_bar(dataset.len());
    let predictions = evaluate::answer_dataset(&qa, &dataset, &params, |done| {
        progress.set_position(done as u64)
    })
    .map_err(|e| match e {
        // A question the pipeline refuses: name the file as well.
        bertqa::Error::Data { .. } => CliError::usage(format!("{}: {e}", args.data.display())),
        other => other.into(),
    })?;
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let metrics = evaluate::score(&dataset, &predictions);
    write_outputs(&args, &dataset, &predictions)?;

    let report = Report {
        metrics: &metrics,
        format: dataset.format,
        elapsed,
        data: &args.data,
        model: &args.common.model,
    };
    if args.json {
        let line =
            serde_json::to_string(&report.to_json()).map_err(|e| CliError::usage(e.to_string()))?;
        println!("{line}");
    } else {
        report.print_human();
    }
    Ok(())
}

/// Writes the predictions file and the no-answer probabilities, where asked for. Both are
/// written in full before either is renamed into place, and an old probabilities file is
/// removed first: a run killed in between leaves the new predictions alone, never beside the
/// probabilities of an earlier run.
fn write_outputs(args: &EvalArgs, dataset: &SquadDataset, predictions: &[Prediction]) -> CliResult {
    let entries = |value: fn(&Prediction) -> Value| {
        let pairs = dataset.examples.iter().zip(predictions);
        Ordered(pairs.map(|(e, p)| (e.id.as_str(), value(p))).collect())
    };
    let texts = match &args.predictions {
        Some(path) => Some((
            write_temporary(path, &entries(|p| Value::from(p.text.as_str())))?,
            path,
        )),
        None => None,
    };
    let probs = match &args.na_probs {
        Some(path) => {
            let value = entries(|p| Value::from(f64::from(p.no_answer_prob)));
            Some((write_temporary(path, &value)?, path))
        }
        None => None,
    };
    if let Some((_, path)) = &probs {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(write_error(path, &e))
            }
            _ => {}
        }
    }
    for (tmp, path) in texts.into_iter().chain(probs) {
        commit(&tmp, path)?;
    }
    Ok(())
}

/// What `bertqa eval` reports.
struct Report<'a> {
    metrics: &'a SquadMetrics,
    format: SquadVersion,
    elapsed: Duration,
    data: &'a Path,
    model: &'a str,
}

impl Report<'_> {
    fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64()
    }

    fn questions_per_second(&self) -> f64 {
        self.metrics.total() as f64 / self.seconds().max(1e-9)
    }

    /// `{"exact_match", "f1", "total", "questions_per_second", "seconds", ...}`, then for v2
    /// data the official v2 keys (`exact`, `HasAns_exact`, `best_f1`, ...).
    fn to_json(&self) -> Ordered<'static> {
        let mut entries: Vec<(&'static str, Value)> = vec![
            ("exact_match", Value::from(self.metrics.exact_match())),
            ("f1", Value::from(self.metrics.f1())),
            ("total", Value::from(self.metrics.total())),
            (
                "questions_per_second",
                Value::from(self.questions_per_second()),
            ),
            ("seconds", Value::from(self.seconds())),
            (
                "squad_version",
                serde_json::to_value(self.format).unwrap_or(Value::Null),
            ),
            ("data", Value::from(self.data.display().to_string())),
            ("model", Value::from(self.model)),
        ];
        if let SquadMetrics::V2(v2) = self.metrics {
            let number = |x: Option<f64>| x.map(Value::from);
            let count = |n: Option<usize>| n.map(Value::from);
            let keys = [
                ("exact", number(Some(v2.exact))),
                ("HasAns_exact", number(v2.has_ans_exact)),
                ("HasAns_f1", number(v2.has_ans_f1)),
                ("HasAns_total", count(v2.has_ans_total)),
                ("NoAns_exact", number(v2.no_ans_exact)),
                ("NoAns_f1", number(v2.no_ans_f1)),
                ("NoAns_total", count(v2.no_ans_total)),
                ("best_exact", number(v2.best_exact)),
                ("best_exact_thresh", number(v2.best_exact_thresh)),
                ("best_f1", number(v2.best_f1)),
                ("best_f1_thresh", number(v2.best_f1_thresh)),
            ];
            entries.extend(keys.into_iter().filter_map(|(k, v)| Some((k, v?))));
        }
        Ordered(entries)
    }

    fn print_human(&self) {
        let version = match self.format {
            SquadVersion::V1 => "SQuAD v1.1",
            SquadVersion::V2 => "SQuAD v2.0",
        };
        println!(
            "{version}: {} questions from {}",
            self.metrics.total(),
            self.data.display()
        );
        println!("  exact match  {:6.2}", self.metrics.exact_match());
        println!("  F1           {:6.2}", self.metrics.f1());
        if let SquadMetrics::V2(v2) = self.metrics {
            let subsets = [
                (
                    "with an answer",
                    v2.has_ans_exact,
                    v2.has_ans_f1,
                    v2.has_ans_total,
                ),
                (
                    "without answer",
                    v2.no_ans_exact,
                    v2.no_ans_f1,
                    v2.no_ans_total,
                ),
            ];
            for (label, exact, f1, total) in subsets {
                if let (Some(exact), Some(f1), Some(total)) = (exact, f1, total) {
                    println!("  {label}: exact {exact:.2}  F1 {f1:.2}  ({total} questions)");
                }
            }
            if let (Some(e), Some(et), Some(f), Some(ft)) = (
                v2.best_exact,
                v2.best_exact_thresh,
                v2.best_f1,
                v2.best_f1_thresh,
            ) {
                println!("  best exact {e:.2} (no-answer threshold {et:.4})");
                println!("  best F1    {f:.2} (no-answer threshold {ft:.4})");
            }
        }
        println!(
            "{} questions in {:.1} s ({:.2} questions/s), model {}",
            self.metrics.total(),
            self.seconds(),
            self.questions_per_second(),
            self.model
        );
    }
}
