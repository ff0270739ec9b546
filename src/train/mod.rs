//! Fine-tuning for extractive QA, as transformers' run_qa.py with the `Trainer`: SQuAD data cut
//! into labelled windows, `(CE(start) + CE(end)) / 2` loss with dropout, AdamW with a linear
//! warm-up/decay schedule, gradient clipping and accumulation, seeded shuffling, and checkpoints
//! that resume exactly.

pub mod data;
pub mod eval;
pub mod model;
pub mod optim;
pub mod state;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{self, HubOptions, WeightsFile};
use crate::error::{Error, Result};
use crate::features::QaTokenizer;
use crate::pipeline::{LoadOptions, QaParams, QaPipeline};
use data::{SquadQuestion, TrainBatch};
use model::TrainableModel;
use optim::{AdamW, AdamWConfig, LinearSchedule};
use state::{RunSettings, Snapshot, TrainingState};

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
    /// Data contains unanswerable questions; evaluation may answer "no answer".
    #[serde(skip)]
    pub version_2_with_negative: bool,
    /// Device.
    #[serde(skip)]
    pub device: Device,
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

fn read_eval(o: &TrainOptions) -> Result<Option<Vec<SquadQuestion>>> {
    let Some(path) = &o.eval_data else {
        return Ok(None);
    };
    let questions = data::read_squad(path)?;
    if questions.is_empty() {
        return Err(Error::Data {
            location: path.display().to_string(),
            message: "holds no questions".into(),
        });
    }
    Ok(Some(questions))
}

/// Runs a training job to the end (or until `observer` stops it) and saves the model.
pub fn train(options: &TrainOptions, observer: &mut dyn TrainObserver) -> Result<TrainSummary> {
    validate(options)?;
    let out = &options.output;
    prepare_output(out)?;
    if !options.resume && state::holds_run(out) {
        return Err(Error::InvalidInput(format!(
            "{} already holds a training run; pass --resume to continue it, or choose another --output",
            out.display()
        )));
    }
    let files = checkpoint::locate(&options.model, &options.hub)?;
    let base_config = checkpoint::read_json(&files.config)?;
    let tokenizer = QaTokenizer::from_checkpoint(&files)?;
    let positions = base_config
        .get("max_position_embeddings")
        .and_then(|v| v.as_u64())
        .unwrap_or(512) as usize;
    if options.max_seq_len > positions {
        return Err(invalid(
            "max_seq_len",
            format!(
                "{} exceeds the model's {positions} position embeddings",
                options.max_seq_len
            ),
        ));
    }

    let questions = data::read_squad(&options.train_data)?;
    if questions.is_empty() {
        return Err(Error::Data {
            location: options.train_data.display().to_string(),
            message: "holds no questions: nothing to train on".into(),
        });
    }
    let eval_questions = read_eval(options)?;
    let feats = data::build_features(
        &tokenizer,
        &questions,
        options.max_seq_len,
        options.doc_stride,
    )?;
    if feats.features.is_empty() {
        return Err(Error::Data {
            location: options.train_data.display().to_string(),
            message: format!(
                "no usable question ({} skipped because answer_start does not point at the answer)",
                feats.skipped_misaligned
            ),
        });
    }
    let nf = feats.features.len();
    let batches_per_epoch = nf.div_ceil(options.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(options.grad_accum);
    let total_steps = options
        .max_steps
        .unwrap_or_else(|| ((options.epochs * steps_per_epoch as f64).ceil() as usize).max(1));
    let num_epochs = total_steps.div_ceil(steps_per_epoch);
    let settings = state::run_settings(options, total_steps, nf)?;

    // Model and optimizer: from the base checkpoint, or from the latest checkpoint when resuming.
    let device = &options.device;
    let resumed = if options.resume {
        let found = state::latest(out)?.ok_or_else(|| {
            Error::InvalidInput(format!(
                "--resume: {} holds no checkpoint; run without --resume to start",
                out.display()
            ))
        })?;
        check_same_settings(&found.state.settings, &settings, &found.dir)?;
        Some(found)
    } else {
        None
    };
    let (config, weights) = match &resumed {
        Some(found) => (
            checkpoint::read_json(&found.dir.join("config.json"))?,
            WeightsFile::Safetensors(found.dir.join("model.safetensors")),
        ),
        None => (base_config, files.weights.clone()),
    };
    let vb = checkpoint::open_weights(&weights, candle_core::DType::F32, device)?;
    let model = TrainableModel::new(&config, vb, options.seed, device).map_err(|e| match e {
        Error::Candle(err) => Error::Checkpoint {
            path: weights.path().into(),
            message: format!("does not fit config.json: {err}"),
        },
        other => other,
    })?;
    let mut optimizer = AdamW::new(
        model.params().iter().map(|p| (p.var.clone(), p.decay)),
        AdamWConfig {
            weight_decay: options.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let schedule =
        LinearSchedule::with_warmup_ratio(options.learning_rate, options.warmup_ratio, total_steps);
    let (mut global_step, mut epoch, mut next_batch, mut last_loss) = (0, 0, 0, None);
    match &resumed {
        Some(found) => {
            state::load_optimizer(&found.dir, &model, &mut optimizer, &found.state, device)?;
            crate::nn::restore_dropout_rng(found.state.dropout_rng);
            global_step = found.state.global_step;
            epoch = found.state.epoch;
            next_batch = found.state.next_batch;
            last_loss = found.state.last_loss;
        }
        None => crate::nn::seed_dropout(options.seed),
    }

    observer.started(&Plan {
        questions: feats.questions,
        skipped_misaligned: feats.skipped_misaligned,
        num_features: nf,
        epochs: num_epochs,
        total_steps,
        start_step: global_step,
        initialised: model.initialised().to_vec(),
    });

    let eval_options = LoadOptions {
        hub: options.hub.clone(),
        device: device.clone(),
        batch_size: options.batch_size,
        ..LoadOptions::default()
    };
    let eval_params = QaParams {
        max_seq_len: Some(options.max_seq_len),
        doc_stride: Some(options.doc_stride),
        handle_impossible_answer: Some(options.version_2_with_negative),
        ..QaParams::default()
    };
    let evaluate = || -> Result<Option<(f64, f64)>> {
        let Some(questions) = &eval_questions else {
            return Ok(None);
        };
        // A pipeline on the current weights, on the fast engine where it applies.
        let qa = QaPipeline::from_tensors(
            files.clone(),
            model.config(),
            model.tensors(),
            &eval_options,
        )?;
        Ok(Some(eval::evaluate(&qa, questions, &eval_params)?))
    };

    let snapshot_state = |global_step: usize,
                          epoch: usize,
                          next_batch: usize,
                          last_loss: Option<f64>,
                          optimizer: &AdamW| {
        let (epoch, next_batch) = if next_batch >= batches_per_epoch {
            (epoch + 1, 0)
        } else {
            (epoch, next_batch)
        };
        TrainingState {
            global_step,
            epoch,
            next_batch,
            shuffle_seed: options.seed,
            dropout_rng: crate::nn::dropout_rng_state(),
            param_steps: model
                .params()
                .iter()
                .zip(&optimizer.states)
                .map(|(p, s)| (p.name.clone(), s.step))
                .collect(),
            settings: settings.clone(),
            last_loss,
        }
    };

    let mut reports = Vec::new();
    let mut stopped = false;
    'epochs: while epoch < num_epochs && global_step < total_steps {
        let order = epoch_order(nf, options.seed, epoch);
        let batches: Vec<&[usize]> = order.chunks(options.batch_size).collect();
        let (mut loss_sum, mut loss_steps) = (0.0, 0usize);
        while next_batch < batches.len() && global_step < total_steps {
            let group_end = (next_batch + options.grad_accum).min(batches.len());
            let group = &batches[next_batch..group_end];
            let mut grads: Vec<Option<Tensor>> = vec![None; model.params().len()];
            let mut step_loss = 0.0;
            let mut examples = 0;
            for idx in group {
                let rows: Vec<_> = idx.iter().map(|&i| &feats.features[i]).collect();
                examples += rows.len();
                let batch = TrainBatch::from_features(&rows, device)?;
                let started = Instant::now();
                let (loss, _) = model.loss(&batch)?;
                let forward_s = started.elapsed().as_secs_f64();
                step_loss += loss.to_scalar::<f32>()? as f64;
                // The Trainer divides each batch's loss by the batches in the step.
                let scaled = if group.len() > 1 {
                    (loss / group.len() as f64)?
                } else {
                    loss
                };
                let started = Instant::now();
                let step_grads = model.backward(&scaled)?;
                tracing::debug!(
                    forward_s,
                    backward_s = started.elapsed().as_secs_f64(),
                    "batch of {}",
                    rows.len()
                );
                for (acc, g) in grads.iter_mut().zip(step_grads) {
                    if let Some(g) = g {
                        *acc = Some(match acc.take() {
                            Some(a) => (a + g)?,
                            None => g,
                        });
                    }
                }
            }
            let started = Instant::now();
            let grad_norm = if options.max_grad_norm > 0.0 {
                optim::clip_grad_norm(&mut grads, options.max_grad_norm)?
            } else {
                f64::NAN
            };
            let lr = schedule.lr(global_step);
            optimizer.step(&grads, lr)?;
            tracing::debug!(
                optimizer_s = started.elapsed().as_secs_f64(),
                "clipping and AdamW"
            );
            global_step += 1;
            next_batch = group_end;
            let loss = step_loss / group.len() as f64;
            last_loss = Some(loss);
            loss_sum += loss;
            loss_steps += 1;
            let flow = observer.step(&StepReport {
                step: global_step,
                total_steps,
                epoch,
                loss,
                lr,
                grad_norm,
                examples,
            });
            if options
                .save_every
                .is_some_and(|n| global_step % n == 0 && global_step < total_steps)
            {
                let st = snapshot_state(global_step, epoch, next_batch, last_loss, &optimizer);
                let dir = state::save_checkpoint(
                    out,
                    &Snapshot {
                        model: &model,
                        optimizer: &optimizer,
                        state: &st,
                        base: &files,
                    },
                )?;
                observer.saved(&dir);
            }
            if flow.is_break() {
                stopped = true;
                break 'epochs;
            }
        }
        let complete = next_batch >= batches.len();
        let report = EpochReport {
            epoch,
            mean_loss: if loss_steps > 0 {
                loss_sum / loss_steps as f64
            } else {
                f64::NAN
            },
            step: global_step,
            eval: evaluate()?,
            complete,
        };
        observer.epoch_end(&report);
        reports.push(report);
        if !complete {
            break;
        }
        epoch += 1;
        next_batch = 0;
    }

    if !stopped {
        let st = snapshot_state(global_step, epoch, next_batch, last_loss, &optimizer);
        state::save_final(
            out,
            &Snapshot {
                model: &model,
                optimizer: &optimizer,
                state: &st,
                base: &files,
            },
        )?;
        observer.saved(out);
    }
    Ok(TrainSummary {
        global_step,
        last_loss,
        epochs: reports,
        stopped,
    })
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
