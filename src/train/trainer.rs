//! One training run in named stages: set up (data, model, optimizer, resumption), epochs of
//! optimiser steps, evaluation after each epoch, and saving.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor};

use super::data::{self, TrainBatch, TrainFeatures};
use super::model::TrainableModel;
use super::optim::{self, AdamW, AdamWConfig, LinearSchedule};
use super::state::{self, Found, RunSettings, Snapshot, TrainingState};
use super::{
    check_same_settings, epoch_order, invalid, prepare_output, validate, EpochReport, Plan,
    StepReport, TrainObserver, TrainOptions, TrainSummary,
};
use crate::checkpoint::{self, CheckpointFiles, WeightsFile};
use crate::error::{Error, Result};
use crate::evaluate;
use crate::features::QaTokenizer;
use crate::models::ModelSpec;
use crate::params::QaParams;
use crate::pipeline::{LoadOptions, QaPipeline};
use crate::squad::SquadDataset;

/// Where a run stands.
#[derive(Clone, Copy, Debug, Default)]
struct Position {
    global_step: usize,
    epoch: usize,
    next_batch: usize,
    last_loss: Option<f64>,
}

/// A run, set up and ready to train.
pub(super) struct Trainer<'o> {
    options: &'o TrainOptions,
    files: CheckpointFiles,
    features: TrainFeatures,
    eval_data: Option<SquadDataset>,
    model: TrainableModel,
    optimizer: AdamW,
    schedule: LinearSchedule,
    settings: RunSettings,
    batches_per_epoch: usize,
    total_steps: usize,
    num_epochs: usize,
    position: Position,
}

/// Reads a SQuAD file that must hold questions.
fn read_questions(path: &Path, empty: &str) -> Result<SquadDataset> {
    let dataset = SquadDataset::from_file(path)?;
    if dataset.is_empty() {
        return Err(Error::Data {
            location: path.display().to_string(),
            message: empty.into(),
        });
    }
    Ok(dataset)
}

impl<'o> Trainer<'o> {
    /// Checks the options, reads the data, builds the model and optimizer (from the latest
    /// checkpoint when resuming).
    pub(super) fn set_up(options: &'o TrainOptions) -> Result<Self> {
        validate(options)?;
        let out = &options.output;
        prepare_output(out)?;
        crate::files::remove_stale_temporaries(out, state::TEMP_PREFIX);
        if !options.resume && state::holds_run(out) {
            return Err(Error::InvalidInput(format!(
                "{} already holds a training run; pass --resume to continue it, or choose \
                 another --output",
                out.display()
            )));
        }
        let files = checkpoint::locate(&options.model, &options.hub)?;
        let base_config = checkpoint::read_json(&files.config)?;
        let spec = ModelSpec::parse(&base_config)?;
        let tokenizer = QaTokenizer::from_checkpoint(&files, &spec)?;
        if options.max_seq_len > spec.max_input_len() {
            return Err(invalid(
                "max_seq_len",
                format!(
                    "{} exceeds the model's {} position embeddings",
                    options.max_seq_len,
                    spec.max_input_len()
                ),
            ));
        }
        let (train_data, features) = Self::features(options, &tokenizer)?;
        let eval_data = match &options.eval_data {
            Some(path) => Some(read_questions(path, "holds no questions")?),
            None => None,
        };
        let nf = features.features.len();
        let batches_per_epoch = nf.div_ceil(options.batch_size);
        let steps_per_epoch = batches_per_epoch.div_ceil(options.grad_accum);
        let total_steps = options
            .max_steps
            .unwrap_or_else(|| ((options.epochs * steps_per_epoch as f64).ceil() as usize).max(1));
        let settings = state::run_settings(
            options,
            total_steps,
            &train_data.examples,
            &features.features,
        )?;
        let resumed = Self::checkpoint_to_resume(options, &settings)?;
        let (model, optimizer, position) =
            Self::model_and_optimizer(options, &files, base_config, resumed.as_ref())?;
        Ok(Self {
            schedule: LinearSchedule::with_warmup_ratio(
                options.learning_rate,
                options.warmup_ratio,
                total_steps,
            ),
            options,
            files,
            features,
            eval_data,
            model,
            optimizer,
            settings,
            batches_per_epoch,
            total_steps,
            num_epochs: total_steps.div_ceil(steps_per_epoch),
            position,
        })
    }

    /// The training questions and their labelled windows; fails when no question is usable.
    fn features(
        options: &TrainOptions,
        tokenizer: &QaTokenizer,
    ) -> Result<(SquadDataset, TrainFeatures)> {
        let path = &options.train_data;
        let train_data = read_questions(path, "holds no questions: nothing to train on")?;
        let (max_seq_len, stride) = (options.max_seq_len, options.doc_stride);
        let features = data::build_features(tokenizer, &train_data.examples, max_seq_len, stride)?;
        if features.features.is_empty() {
            return Err(Error::Data {
                location: path.display().to_string(),
                message: format!(
                    "no usable question ({} skipped because answer_start does not point at the \
                     answer)",
                    features.skipped_misaligned
                ),
            });
        }
        Ok((train_data, features))
    }

    /// With `--resume`, the most advanced checkpoint, which must come from a run with the same
    /// settings.
    fn checkpoint_to_resume(
        options: &TrainOptions,
        settings: &RunSettings,
    ) -> Result<Option<Found>> {
        if !options.resume {
            return Ok(None);
        }
        let out = &options.output;
        let found = state::latest(out)?.ok_or_else(|| {
            Error::InvalidInput(format!(
                "--resume: {} holds no checkpoint; run without --resume to start",
                out.display()
            ))
        })?;
        check_same_settings(&found.state.settings, settings, &found.dir)?;
        Ok(Some(found))
    }

    /// The model and optimizer: from the base checkpoint, or restored from `resumed`; seeds
    /// or restores the dropout generator.
    fn model_and_optimizer(
        options: &TrainOptions,
        files: &CheckpointFiles,
        base_config: serde_json::Value,
        resumed: Option<&Found>,
    ) -> Result<(TrainableModel, AdamW, Position)> {
        let device = &options.device;
        let (config, weights) = match resumed {
            Some(found) => (
                checkpoint::read_json(&found.dir.join("config.json"))?,
                WeightsFile::Safetensors(found.dir.join("model.safetensors")),
            ),
            None => (base_config, files.weights.clone()),
        };
        let vb = checkpoint::open_weights(&weights, DType::F32, device)?;
        let mut model =
            TrainableModel::new(&config, vb, options.seed, device).map_err(|e| match e {
                Error::Candle(err) => Error::Checkpoint {
                    path: weights.path().into(),
                    message: format!("does not fit config.json: {err}"),
                },
                other => other,
            })?;
        model.set_compute_dtype(options.dtype.dtype())?;
        let mut optimizer = AdamW::new(
            model.params().iter().map(|p| (p.var.clone(), p.decay)),
            AdamWConfig {
                weight_decay: options.weight_decay,
                ..AdamWConfig::default()
            },
        )?;
        let position = match resumed {
            Some(found) => {
                let s = &found.state;
                state::load_optimizer(&found.dir, &model, &mut optimizer, s, device)?;
                crate::nn::restore_dropout_rng(s.dropout_rng);
                Position {
                    global_step: s.global_step,
                    epoch: s.epoch,
                    next_batch: s.next_batch,
                    last_loss: s.last_loss,
                }
            }
            None => {
                crate::nn::seed_dropout(options.seed);
                Position::default()
            }
        };
        Ok((model, optimizer, position))
    }

    /// What the run is about to do.
    fn plan(&self) -> Plan {
        Plan {
            questions: self.features.questions,
            skipped_misaligned: self.features.skipped_misaligned,
            num_features: self.features.features.len(),
            epochs: self.num_epochs,
            total_steps: self.total_steps,
            start_step: self.position.global_step,
            initialised: self.model.initialised().to_vec(),
        }
    }

    /// Trains to the end (or until `observer` stops the run), evaluating after each epoch,
    /// then saves the model unless stopped.
    pub(super) fn run(mut self, observer: &mut dyn TrainObserver) -> Result<TrainSummary> {
        observer.started(&self.plan());
        let mut reports = Vec::new();
        let mut stopped = false;
        while self.position.epoch < self.num_epochs && self.position.global_step < self.total_steps
        {
            let Some(report) = self.epoch(observer)? else {
                stopped = true;
                break;
            };
            observer.epoch_end(&report);
            let complete = report.complete;
            reports.push(report);
            if !complete {
                break;
            }
            self.position.epoch += 1;
            self.position.next_batch = 0;
        }
        if !stopped {
            self.save_final()?;
            observer.saved(&self.options.output);
        }
        Ok(TrainSummary {
            global_step: self.position.global_step,
            last_loss: self.position.last_loss,
            epochs: reports,
            stopped,
        })
    }

    /// The rest of the current epoch, then its evaluation; `None` when the observer stopped
    /// the run.
    fn epoch(&mut self, observer: &mut dyn TrainObserver) -> Result<Option<EpochReport>> {
        let o = self.options;
        let order = epoch_order(self.features.features.len(), o.seed, self.position.epoch);
        let batches: Vec<&[usize]> = order.chunks(o.batch_size).collect();
        let (mut loss_sum, mut loss_steps) = (0.0, 0usize);
        while self.position.next_batch < batches.len()
            && self.position.global_step < self.total_steps
        {
            let start = self.position.next_batch;
            let group = &batches[start..(start + o.grad_accum).min(batches.len())];
            let report = self.step(group)?;
            loss_sum += report.loss;
            loss_steps += 1;
            let flow = observer.step(&report);
            let step = self.position.global_step;
            if o.save_every
                .is_some_and(|n| step.is_multiple_of(n) && step < self.total_steps)
            {
                observer.saved(&self.save_checkpoint()?);
            }
            if flow.is_break() {
                return Ok(None);
            }
        }
        Ok(Some(EpochReport {
            epoch: self.position.epoch,
            mean_loss: if loss_steps > 0 {
                loss_sum / loss_steps as f64
            } else {
                f64::NAN
            },
            step: self.position.global_step,
            eval: self.evaluate()?,
            complete: self.position.next_batch >= batches.len(),
        }))
    }

    /// One optimiser step over a group of batches (gradient accumulation): forward, backward,
    /// clipping, AdamW.
    fn step(&mut self, group: &[&[usize]]) -> Result<StepReport> {
        let mut grads: Vec<Option<Tensor>> = vec![None; self.model.params().len()];
        let (mut step_loss, mut examples) = (0.0, 0);
        for idx in group {
            let rows: Vec<_> = idx.iter().map(|&i| &self.features.features[i]).collect();
            examples += rows.len();
            let batch = TrainBatch::from_features(&rows, &self.options.device)?;
            step_loss += self.accumulate(&batch, group.len(), &mut grads)?;
        }
        let started = Instant::now();
        let grad_norm = if self.options.max_grad_norm > 0.0 {
            optim::clip_grad_norm(&mut grads, self.options.max_grad_norm)?
        } else {
            f64::NAN
        };
        let lr = self.schedule.lr(self.position.global_step);
        self.optimizer.step(&grads, lr)?;
        tracing::debug!(
            optimizer_s = started.elapsed().as_secs_f64(),
            "clipping and AdamW"
        );
        let loss = step_loss / group.len() as f64;
        let p = &mut self.position;
        p.global_step += 1;
        p.next_batch += group.len();
        p.last_loss = Some(loss);
        Ok(StepReport {
            step: p.global_step,
            total_steps: self.total_steps,
            epoch: p.epoch,
            loss,
            lr,
            grad_norm,
            examples,
        })
    }

    /// Forward and backward over one batch of a step of `batches` batches; adds its gradients
    /// to `grads` and returns its loss.
    fn accumulate(
        &self,
        batch: &TrainBatch,
        batches: usize,
        grads: &mut [Option<Tensor>],
    ) -> Result<f64> {
        let started = Instant::now();
        let (loss, _) = self.model.loss(batch)?;
        let forward_s = started.elapsed().as_secs_f64();
        let value = loss.to_scalar::<f32>()? as f64;
        // The Trainer divides each batch's loss by the batches in the step.
        let scaled = if batches > 1 {
            (loss / batches as f64)?
        } else {
            loss
        };
        let started = Instant::now();
        let step_grads = self.model.backward(&scaled)?;
        tracing::debug!(
            forward_s,
            backward_s = started.elapsed().as_secs_f64(),
            "batch of {}",
            batch.start_positions.dim(0)?
        );
        for (acc, g) in grads.iter_mut().zip(step_grads) {
            if let Some(g) = g {
                *acc = Some(match acc.take() {
                    Some(a) => (a + g)?,
                    None => g,
                });
            }
        }
        Ok(value)
    }

    /// Exact match and F1 of the current weights on the evaluation data, as `bertqa eval`
    /// computes them (same code), at the run's window settings.
    fn evaluate(&self) -> Result<Option<(f64, f64)>> {
        let Some(dataset) = &self.eval_data else {
            return Ok(None);
        };
        let o = self.options;
        let load = LoadOptions {
            hub: o.hub.clone(),
            device: o.device.clone(),
            batch_size: o.batch_size,
            ..LoadOptions::default()
        };
        // A pipeline on the current weights, on the fast engine where it applies.
        let (config, tensors) = (self.model.config(), self.model.tensors());
        let qa = QaPipeline::from_tensors(self.files.clone(), config, tensors, &load)?;
        let mut params = evaluate::dataset_params(
            dataset,
            &QaParams {
                max_seq_len: Some(o.max_seq_len),
                doc_stride: Some(o.doc_stride),
                ..QaParams::default()
            },
        );
        if o.version_2_with_negative {
            params.handle_impossible_answer = Some(true);
        }
        let predictions = evaluate::answer_dataset(&qa, dataset, &params, |_| {})?;
        let metrics = evaluate::score(dataset, &predictions);
        Ok(Some((metrics.exact_match(), metrics.f1())))
    }

    /// The state saved with a checkpoint: after the last batch of an epoch, the next epoch's
    /// start.
    fn training_state(&self) -> TrainingState {
        let p = self.position;
        let (epoch, next_batch) = if p.next_batch >= self.batches_per_epoch {
            (p.epoch + 1, 0)
        } else {
            (p.epoch, p.next_batch)
        };
        TrainingState {
            global_step: p.global_step,
            epoch,
            next_batch,
            shuffle_seed: self.options.seed,
            dropout_rng: crate::nn::dropout_rng_state(),
            param_steps: self
                .model
                .params()
                .iter()
                .zip(&self.optimizer.states)
                .map(|(p, s)| (p.name.clone(), s.step))
                .collect(),
            settings: self.settings.clone(),
            last_loss: p.last_loss,
        }
    }

    /// What a checkpoint of the run holds, with its `state`.
    fn snapshot<'a>(&'a self, state: &'a TrainingState) -> Snapshot<'a> {
        Snapshot {
            model: &self.model,
            optimizer: &self.optimizer,
            state,
            base: &self.files,
        }
    }

    /// Saves `checkpoint-STEP/` in the output directory.
    fn save_checkpoint(&self) -> Result<std::path::PathBuf> {
        let state = self.training_state();
        state::save_checkpoint(&self.options.output, &self.snapshot(&state))
    }

    /// Saves the trained model into the output directory itself.
    fn save_final(&self) -> Result<()> {
        let state = self.training_state();
        state::save_final(&self.options.output, &self.snapshot(&state))
    }
}
