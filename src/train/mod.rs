//! Fine-tuning for extractive QA, as transformers' run_qa.py with the `Trainer`: SQuAD data cut
//! into labelled windows, `(CE(start) + CE(end)) / 2` loss with dropout, AdamW with a linear
//! warm-up/decay schedule, gradient clipping and accumulation, seeded shuffling, and checkpoints
//! that resume exactly.

pub mod data;
pub mod model;
pub mod optim;
pub mod state;
mod trainer;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::Device;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::HubOptions;
use crate::device::FloatType;
use crate::error::{Error, Result};
use state::RunSettings;
use trainer::Trainer;

pub use model::{zero_dropout, Param};

/// Everything a training run needs; defaults are those of run_qa.py and the `Trainer`
/// (except `epochs`, 2 as the SQuAD recipe of the transformers examples).
///
/// Serialised, it gives the settings that shape a run, which a `--resume` must share with the
/// run it continues (see [`state::RunSettings`]); where the data lives, where the output goes
/// and when to stop or save are left out.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainOptions {
    /// Base checkpoint (directory or Hub id); it may lack a QA head.
    #[serde(skip)]
    pub model: String,
    /// Hub access.
    #[serde(skip)]
    pub hub: HubOptions,
    /// SQuAD-format training file.
    #[serde(skip)]
    pub train_data: PathBuf,
    /// SQuAD-format file evaluated (EM/F1) after every epoch.
    #[serde(skip)]
    pub eval_data: Option<PathBuf>,
    /// Output directory: the trained model, and `checkpoint-STEP/` directories.
    #[serde(skip)]
    pub output: PathBuf,
    /// Epochs (may be fractional).
    pub epochs: f64,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Windows per batch.
    pub batch_size: usize,
    /// Batches whose gradients are summed per optimiser step.
    pub grad_accum: usize,
    /// Window length in tokens.
    pub max_seq_len: usize,
    /// Overlap of consecutive windows in tokens.
    pub doc_stride: usize,
    /// Fraction of the steps spent warming the learning rate up.
    pub warmup_ratio: f64,
    /// AdamW's decoupled weight decay (not on biases and LayerNorm weights).
    pub weight_decay: f64,
    /// Global gradient-norm limit (0 disables clipping).
    pub max_grad_norm: f64,
    /// Seed of shuffling, dropout and head initialisation.
    pub seed: u64,
    /// Stop after this many optimiser steps (overrides `epochs`).
    #[serde(skip)]
    pub max_steps: Option<usize>,
    /// Save `checkpoint-STEP/` every this many steps.
    #[serde(skip)]
    pub save_every: Option<usize>,
    /// Continue from the most advanced checkpoint in `output`.
    #[serde(skip)]
    pub resume: bool,
    /// Evaluation may answer "no answer" even on data without unanswerable questions (on
    /// SQuAD v2.0 data it always may, as in `bertqa eval`).
    #[serde(skip)]
    pub version_2_with_negative: bool,
    /// Device.
    #[serde(skip)]
    pub device: Device,
    /// What the passes compute in: f32, or bf16 (mixed precision: f32 parameters, gradients
    /// and optimizer; GPU only).
    #[serde(skip)]
    pub dtype: FloatType,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            model: String::new(),
            hub: HubOptions::default(),
            train_data: PathBuf::new(),
            eval_data: None,
            output: PathBuf::new(),
            epochs: 2.0,
            learning_rate: 3e-5,
            batch_size: 12,
            grad_accum: 1,
            max_seq_len: 384,
            doc_stride: 128,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
            max_steps: None,
            save_every: None,
            resume: false,
            version_2_with_negative: false,
            device: Device::Cpu,
            dtype: FloatType::F32,
        }
    }
}

/// What the run is about to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Questions turned into features.
    pub questions: usize,
    /// Questions skipped (answer_start not at the answer text).
    pub skipped_misaligned: usize,
    /// Training windows.
    pub num_features: usize,
    /// Epochs to run (the last may be partial).
    pub epochs: usize,
    /// Optimiser steps in all.
    pub total_steps: usize,
    /// Step the run starts from (non-zero when resuming).
    pub start_step: usize,
    /// Parameters initialised rather than loaded.
    pub initialised: Vec<String>,
}

/// One optimiser step.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Steps done, this one included.
    pub step: usize,
    /// Steps in all.
    pub total_steps: usize,
    /// 0-based epoch.
    pub epoch: usize,
    /// Mean loss of the step's batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Windows trained on in this step.
    pub examples: usize,
}

/// End of an epoch.
#[derive(Clone, Debug)]
pub struct EpochReport {
    /// 0-based epoch.
    pub epoch: usize,
    /// Mean loss over the epoch's steps run in this process.
    pub mean_loss: f64,
    /// Steps done so far.
    pub step: usize,
    /// Exact match and F1 (percent) on the evaluation data, when given.
    pub eval: Option<(f64, f64)>,
    /// False when the epoch was cut short by `max_steps`.
    pub complete: bool,
}

/// Receives progress; returning `Break` from [`TrainObserver::step`] stops the run (without a
/// final save: the last `checkpoint-STEP/` is what `--resume` continues from).
pub trait TrainObserver {
    /// Called once before the first step.
    fn started(&mut self, _plan: &Plan) {}
    /// Called after every optimiser step.
    fn step(&mut self, _report: &StepReport) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// Called after every epoch (and its evaluation).
    fn epoch_end(&mut self, _report: &EpochReport) {}
    /// Called after a checkpoint was written.
    fn saved(&mut self, _dir: &Path) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl TrainObserver for Silent {}

/// Result of a run.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// Optimiser steps done.
    pub global_step: usize,
    /// Mean loss of the last step.
    pub last_loss: Option<f64>,
    /// Per-epoch reports.
    pub epochs: Vec<EpochReport>,
    /// True when the observer stopped the run before the end.
    pub stopped: bool,
}

fn invalid(name: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidParameter {
        name,
        message: message.into(),
    }
}

fn validate(o: &TrainOptions) -> Result<()> {
    if o.batch_size == 0 {
        return Err(invalid("batch_size", "must be at least 1"));
    }
    if o.grad_accum == 0 {
        return Err(invalid("grad_accum", "must be at least 1"));
    }
    if o.max_steps == Some(0) {
        return Err(invalid("max_steps", "must be at least 1"));
    }
    if o.save_every == Some(0) {
        return Err(invalid("save_every", "must be at least 1"));
    }
    if !(o.epochs > 0.0 && o.epochs.is_finite()) && o.max_steps.is_none() {
        return Err(invalid("epochs", "must be a positive number"));
    }
    if !(o.learning_rate >= 0.0 && o.learning_rate.is_finite()) {
        return Err(invalid("learning_rate", "must be a non-negative number"));
    }
    if !(0.0..=1.0).contains(&o.warmup_ratio) {
        return Err(invalid("warmup_ratio", "must lie in [0, 1]"));
    }
    if !(o.weight_decay >= 0.0 && o.max_grad_norm >= 0.0) {
        return Err(invalid(
            "weight_decay / max_grad_norm",
            "must be non-negative",
        ));
    }
    o.dtype.check_device(&o.device)?;
    if o.dtype == FloatType::F16 {
        return Err(invalid(
            "dtype",
            "training computes in f32 or bf16 (mixed precision); f16 would need loss scaling",
        ));
    }
    if o.doc_stride >= o.max_seq_len {
        return Err(invalid(
            "doc_stride",
            format!(
                "{} must be smaller than max_seq_len {}",
                o.doc_stride, o.max_seq_len
            ),
        ));
    }
    Ok(())
}

/// Makes sure `output` exists and accepts files.
fn prepare_output(output: &Path) -> Result<()> {
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
    let probe = output.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| Error::io(output, e))?;
    std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
}

/// Each epoch's order of the features: a Fisher–Yates shuffle from (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Runs a training job to the end (or until `observer` stops it) and saves the model.
/// Subnormal floats are flushed meanwhile (see [`crate::fpenv`]); the calling thread gets its
/// floating-point settings back on return.
pub fn train(options: &TrainOptions, observer: &mut dyn TrainObserver) -> Result<TrainSummary> {
    let _flush = crate::fpenv::FlushGuard::new();
    Trainer::set_up(options)?.run(observer)
}

fn check_same_settings(saved: &RunSettings, now: &RunSettings, dir: &Path) -> Result<()> {
    if saved == now {
        return Ok(());
    }
    let mut keys: Vec<&String> = saved.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    let shown = |v: Option<&serde_json::Value>| v.map_or("unset".to_string(), |v| v.to_string());
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| saved.get(*k) != now.get(*k))
        .map(|k| {
            format!(
                "{k}: {} then, {} now",
                shown(saved.get(k)),
                shown(now.get(k))
            )
        })
        .collect();
    Err(Error::InvalidInput(format!(
        "--resume: the checkpoint in {} was made with other settings ({}); rerun with the same \
         options and data, or start a new run in another --output",
        dir.display(),
        diffs.join("; ")
    )))
}
