//! `bertqa train`: fine-tune a checkpoint for extractive QA on SQuAD-format data.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bertqa::train::{self, EpochReport, Plan, StepReport, TrainObserver, TrainOptions};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{CliResult, CommonArgs};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Base checkpoint: a directory or Hub id (a QA head is added when it has none).
    #[arg(long, short = 'm', env = "BERTQA_MODEL")]
    model: String,
    /// Training data, SQuAD v1.1/v2.0 JSON.
    #[arg(long)]
    train_data: PathBuf,
    /// Output directory: the fine-tuned model, and checkpoint-STEP/ directories.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Evaluation data (SQuAD JSON): EM and F1 after every epoch.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Training epochs (may be fractional).
    #[arg(long, default_value_t = 2.0)]
    epochs: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-5)]
    learning_rate: f64,
    /// Windows per batch.
    #[arg(long, default_value_t = 12)]
    batch_size: usize,
    /// Batches per optimiser step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Window length in tokens.
    #[arg(long, default_value_t = 384)]
    max_seq_len: usize,
    /// Overlap between windows in tokens.
    #[arg(long, default_value_t = 128)]
    doc_stride: usize,
    /// Fraction of the steps spent warming the learning rate up linearly.
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    /// AdamW weight decay (not on biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip gradients to this global norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Seed of shuffling, dropout and QA-head initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop after N optimiser steps (overrides --epochs).
    #[arg(long, value_name = "N")]
    max_steps: Option<usize>,
    /// Save a resumable checkpoint-STEP/ every N steps.
    #[arg(long, value_name = "N")]
    save_every: Option<usize>,
    /// Continue the run in --output from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// The data has unanswerable questions (SQuAD 2.0): evaluation may answer "no answer".
    #[arg(long)]
    version_2_with_negative: bool,
    /// Never touch the network: use the local directory or the HF cache only.
    #[arg(long)]
    offline: bool,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    revision: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Log more (-v: debug, -vv: trace).
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Progress bar on a terminal, a line per epoch always.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    examples: usize,
}

impl Progress {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(
            None,
            if std::io::stderr().is_terminal() {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            bar,
            started: Instant::now(),
            examples: 0,
        }
    }
}

impl TrainObserver for Progress {
    fn started(&mut self, plan: &Plan) {
        self.bar.set_length(plan.total_steps as u64);
        self.bar.set_position(plan.start_step as u64);
        self.bar.reset_eta();
        if plan.skipped_misaligned > 0 {
            eprintln!(
                "warning: skipped {} question(s) whose answer_start does not point at the answer",
                plan.skipped_misaligned
            );
        }
        if !plan.initialised.is_empty() {
            eprintln!("new QA head initialised: {}", plan.initialised.join(", "));
        }
        eprintln!(
            "training on {} windows from {} questions: {} epoch(s), {} steps{}",
            plan.num_features,
            plan.questions,
            plan.epochs,
            plan.total_steps,
            if plan.start_step > 0 {
                format!(", resuming at step {}", plan.start_step)
            } else {
                String::new()
            }
        );
        self.started = Instant::now();
    }

    fn step(&mut self, r: &StepReport) -> ControlFlow<()> {
        self.examples += r.examples;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_position(r.step as u64);
        self.bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.1} ex/s",
            r.loss,
            r.lr,
            self.examples as f64 / secs
        ));
        ControlFlow::Continue(())
    }

    fn epoch_end(&mut self, r: &EpochReport) {
        let eval = match r.eval {
            Some((em, f1)) => format!("  eval EM {em:.2} F1 {f1:.2}"),
            None => String::new(),
        };
        self.bar.suspend(|| {
            eprintln!(
                "epoch {}{}: mean loss {:.4}, step {}{eval}",
                r.epoch + 1,
                if r.complete { "" } else { " (partial)" },
                r.mean_loss,
                r.step
            )
        });
    }

    fn saved(&mut self, dir: &Path) {
        self.bar.suspend(|| eprintln!("saved {}", dir.display()));
    }
}

pub fn run(args: TrainArgs) -> CliResult {
    CommonArgs {
        model: args.model.clone(),
        offline: args.offline,
        revision: args.revision.clone(),
        threads: args.threads,
        verbose: args.verbose,
    }
    .init();
    let device = args.device.open()?;
    let options = TrainOptions {
        model: args.model,
        hub: bertqa::HubOptions {
            offline: args.offline,
            revision: args.revision,
        },
        train_data: args.train_data,
        eval_data: args.eval_data,
        output: args.output,
        epochs: args.epochs,
        learning_rate: args.learning_rate,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        max_seq_len: args.max_seq_len,
        doc_stride: args.doc_stride,
        warmup_ratio: args.warmup_ratio,
        weight_decay: args.weight_decay,
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        max_steps: args.max_steps,
        save_every: args.save_every,
        resume: args.resume,
        version_2_with_negative: args.version_2_with_negative,
        device,
        dtype: args.device.dtype,
    };
    let mut progress = Progress::new();
    let started = Instant::now();
    let summary = train::train(&options, &mut progress)?;
    progress.bar.finish_and_clear();
    eprintln!(
        "done: {} steps in {}, model saved to {}",
        summary.global_step,
        format_duration(started.elapsed()),
        options.output.display()
    );
    Ok(())
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
