//! Saving and restoring training checkpoints: a Hub-style model directory (config.json,
//! model.safetensors with Hugging Face names, the tokenizer's files) plus what `--resume` needs
//! to continue exactly (optimizer moments, steps, data position, dropout generator).
//!
//! Every checkpoint is written into a temporary directory inside the output directory, synced,
//! then renamed into place, so that an interrupted save never leaves a half-written checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use super::data::TrainFeature;
use super::model::TrainableModel;
use super::optim::AdamW;
use super::TrainOptions;
use crate::checkpoint::CheckpointFiles;
use crate::error::{Error, Result};
use crate::nn::DropoutRngState;
use crate::squad::SquadExample;

/// File holding [`TrainingState`].
pub const STATE_FILE: &str = "training_state.json";
/// File holding the optimizer moments (`exp_avg.NAME`, `exp_avg_sq.NAME`).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Prefix of intermediate checkpoint directories (`checkpoint-STEP`).
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";

/// Tokenizer files copied next to the weights when present in the base checkpoint.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "spm.model",
    "sentencepiece.bpe.model",
];

/// Settings that must not change between a run and its resumption: the serialised
/// [`TrainOptions`] (the fields that shape the run: learning rate, epochs, batch size, …) with
/// the run's total steps, its number of training windows and a digest of those windows and
/// their labels (which identifies the data and its preprocessing, down to one changed word).
pub type RunSettings = serde_json::Map<String, serde_json::Value>;

/// SHA-256, as hex, of the training data: every question (id, text, context, answers) and the
/// windows made of them (token ids, token types, mask, labels), in order.
pub fn data_digest(examples: &[SquadExample], features: &[TrainFeature]) -> String {
    let mut hash = Sha256::new();
    let mut text = |s: &str| {
        hash.update((s.len() as u64).to_le_bytes());
        hash.update(s.as_bytes());
    };
    for e in examples {
        text(&e.id);
        text(&e.question);
        text(&e.context);
        for a in &e.answers {
            text(&a.text);
            text(&a.answer_start.to_string());
        }
        text(if e.is_impossible { "impossible" } else { "" });
    }
    for f in features {
        for row in [&f.input_ids, &f.token_type_ids, &f.attention_mask] {
            hash.update((row.len() as u64).to_le_bytes());
            for v in row.iter() {
                hash.update(v.to_le_bytes());
            }
        }
        hash.update(f.start_position.to_le_bytes());
        hash.update(f.end_position.to_le_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// [`RunSettings`] of a run of `options` over `examples`, cut into `features`, in
/// `total_steps` steps.
pub fn run_settings(
    options: &TrainOptions,
    total_steps: usize,
    examples: &[SquadExample],
    features: &[TrainFeature],
) -> Result<RunSettings> {
    #[derive(Serialize)]
    struct Settings<'a> {
        #[serde(flatten)]
        options: &'a TrainOptions,
        total_steps: usize,
        num_features: usize,
        data_sha256: String,
    }
    let settings = Settings {
        options,
        total_steps,
        num_features: features.len(),
        data_sha256: data_digest(examples, features),
    };
    match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::InvalidInput(
            "run settings: not a JSON object".into(),
        )),
        Err(e) => Err(Error::InvalidInput(format!("run settings: {e}"))),
    }
}

/// Where a run stands, saved with each checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Optimiser steps done (the scheduler's position).
    pub global_step: usize,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Next batch to run in that epoch's order.
    pub next_batch: usize,
    /// Seed of the shuffle (each epoch's order derives from it and the epoch number).
    pub shuffle_seed: u64,
    /// Dropout generator position.
    pub dropout_rng: DropoutRngState,
    /// Steps each parameter has taken in AdamW (bias correction).
    pub param_steps: BTreeMap<String, u64>,
    /// The run's settings.
    pub settings: RunSettings,
    /// Mean loss of the last optimiser step.
    pub last_loss: Option<f64>,
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io(path, e))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = io(path, File::create(path))?;
    io(path, f.write_all(bytes))?;
    io(path, f.sync_all())
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Directories can be opened and synced on Unix; elsewhere the rename is the best we have.
    if cfg!(unix) {
        io(dir, File::open(dir).and_then(|d| d.sync_all()))?;
    }
    Ok(())
}

fn save_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::serialize_to_file(sorted, Some(metadata), path).map_err(|e| {
        Error::io(
            path,
            std::io::Error::other(format!("cannot write safetensors: {e}")),
        )
    })?;
    io(path, File::open(path).and_then(|f| f.sync_all()))
}

/// Everything a checkpoint holds.
pub struct Snapshot<'a> {
    /// The model.
    pub model: &'a TrainableModel,
    /// The optimizer.
    pub optimizer: &'a AdamW,
    /// Run position.
    pub state: &'a TrainingState,
    /// The base checkpoint (its tokenizer files are copied).
    pub base: &'a CheckpointFiles,
}

fn write_all_files(dir: &Path, snap: &Snapshot) -> Result<Vec<&'static str>> {
    let mut names = Vec::new();
    let config = serde_json::to_vec_pretty(snap.model.config())
        .map_err(|e| Error::InvalidInput(format!("config.json: {e}")))?;
    write_synced(&dir.join("config.json"), &config)?;
    names.push("config.json");
    save_safetensors(&dir.join("model.safetensors"), &snap.model.tensors())?;
    names.push("model.safetensors");
    let mut moments = HashMap::new();
    for (p, s) in snap.model.params().iter().zip(&snap.optimizer.states) {
        moments.insert(format!("exp_avg.{}", p.name), s.m.clone());
        moments.insert(format!("exp_avg_sq.{}", p.name), s.v.clone());
    }
    save_safetensors(&dir.join(OPTIMIZER_FILE), &moments)?;
    names.push(OPTIMIZER_FILE);
    let base_dir = snap.base.config.parent().map(Path::to_path_buf);
    for name in TOKENIZER_FILES {
        let explicit = [
            &snap.base.tokenizer_json,
            &snap.base.tokenizer_config,
            &snap.base.vocab_txt,
        ]
        .into_iter()
        .flatten()
        .find(|p| p.file_name().is_some_and(|f| f == *name))
        .cloned();
        let src = explicit.or_else(|| {
            base_dir
                .as_ref()
                .map(|d| d.join(name))
                .filter(|p| p.is_file())
        });
        if let Some(src) = src {
            let bytes = io(&src, std::fs::read(&src))?;
            write_synced(&dir.join(name), &bytes)?;
            names.push(name);
        }
    }
    let state = serde_json::to_vec_pretty(snap.state)
        .map_err(|e| Error::InvalidInput(format!("{STATE_FILE}: {e}")))?;
    // Written last: a directory with this file is a complete checkpoint.
    write_synced(&dir.join(STATE_FILE), &state)?;
    names.push(STATE_FILE);
    Ok(names)
}

/// Prefix of the temporary directories checkpoints are written into (`.tmp-TAG-PID`).
pub const TEMP_PREFIX: &str = ".tmp-";

fn temp_dir(output: &Path, tag: &str) -> Result<PathBuf> {
    let tmp = output.join(format!("{TEMP_PREFIX}{tag}-{}", std::process::id()));
    if tmp.exists() {
        io(&tmp, std::fs::remove_dir_all(&tmp))?;
    }
    io(&tmp, std::fs::create_dir_all(&tmp))?;
    Ok(tmp)
}

/// Writes `output/checkpoint-STEP/` atomically (replacing an older one of the same step).
pub fn save_checkpoint(output: &Path, snap: &Snapshot) -> Result<PathBuf> {
    let name = format!("{CHECKPOINT_PREFIX}{}", snap.state.global_step);
    let tmp = temp_dir(output, &name)?;
    write_all_files(&tmp, snap)?;
    sync_dir(&tmp)?;
    let target = output.join(&name);
    if target.exists() {
        io(&target, std::fs::remove_dir_all(&target))?;
    }
    io(&target, std::fs::rename(&tmp, &target))?;
    sync_dir(output)?;
    Ok(target)
}

/// Writes the final model into `output` itself: files are prepared in a temporary directory,
/// synced, then each renamed into place, the training state last.
pub fn save_final(output: &Path, snap: &Snapshot) -> Result<()> {
    let tmp = temp_dir(output, "final")?;
    let names = write_all_files(&tmp, snap)?;
    sync_dir(&tmp)?;
    for name in names {
        let (from, to) = (tmp.join(name), output.join(name));
        io(&to, std::fs::rename(&from, &to))?;
    }
    sync_dir(output)?;
    io(&tmp, std::fs::remove_dir(&tmp))
}

/// A checkpoint found in an output directory.
#[derive(Clone, Debug)]
pub struct Found {
    /// Its directory.
    pub dir: PathBuf,
    /// Its state.
    pub state: TrainingState,
}

fn read_state(dir: &Path) -> Result<TrainingState> {
    let path = dir.join(STATE_FILE);
    let text = io(&path, std::fs::read_to_string(&path))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path,
        message: format!("not a bertqa training state ({e})"),
    })
}

/// True when `output` already holds a run (a final model or checkpoints).
pub fn holds_run(output: &Path) -> bool {
    output.join(STATE_FILE).is_file() || !checkpoint_dirs(output).is_empty()
}

fn checkpoint_dirs(output: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(output) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(CHECKPOINT_PREFIX))
                && p.join(STATE_FILE).is_file()
        })
        .collect()
}

/// The most advanced checkpoint in `output` (the final model counts), if any.
pub fn latest(output: &Path) -> Result<Option<Found>> {
    let mut dirs = checkpoint_dirs(output);
    if output.join(STATE_FILE).is_file() {
        dirs.push(output.to_path_buf());
    }
    let mut best: Option<Found> = None;
    for dir in dirs {
        let state = read_state(&dir)?;
        if best
            .as_ref()
            .is_none_or(|b| state.global_step > b.state.global_step)
        {
            best = Some(Found { dir, state });
        }
    }
    Ok(best)
}

/// Restores AdamW moments and step counts saved by [`save_checkpoint`] / [`save_final`].
pub fn load_optimizer(
    dir: &Path,
    model: &TrainableModel,
    optimizer: &mut AdamW,
    state: &TrainingState,
    device: &Device,
) -> Result<()> {
    let path = dir.join(OPTIMIZER_FILE);
    let tensors = candle_core::safetensors::load(&path, device).map_err(|e| Error::Checkpoint {
        path: path.clone(),
        message: format!("cannot read optimizer state ({e}); the checkpoint is damaged"),
    })?;
    for (p, s) in model.params().iter().zip(optimizer.states.iter_mut()) {
        let get = |key: String| {
            tensors.get(&key).cloned().ok_or_else(|| Error::Weights {
                path: path.clone(),
                tensor: key,
                message: "missing from the optimizer state".into(),
            })
        };
        s.m = get(format!("exp_avg.{}", p.name))?;
        s.v = get(format!("exp_avg_sq.{}", p.name))?;
        s.step = state.param_steps.get(&p.name).copied().unwrap_or(0);
    }
    Ok(())
}
