//! Finding and loading checkpoints as published on the Hugging Face Hub: a local directory, or a
//! Hub id resolved through the standard HF cache (shared with Python's `huggingface_hub`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

/// The Hub model used when none is given.
pub const DEFAULT_MODEL: &str = "bert-large-uncased-whole-word-masking-finetuned-squad";

/// Where the weights of a checkpoint are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightsFile {
    /// `model.safetensors`, memory-mapped.
    Safetensors(PathBuf),
    /// `pytorch_model.bin` (PyTorch pickle/zip).
    PytorchBin(PathBuf),
}

impl WeightsFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            WeightsFile::Safetensors(p) | WeightsFile::PytorchBin(p) => p,
        }
    }
}

/// The files of one checkpoint, all local.
#[derive(Clone, Debug)]
pub struct CheckpointFiles {
    /// What the user asked for (directory or Hub id).
    pub name: String,
    /// config.json.
    pub config: PathBuf,
    /// tokenizer.json, when the checkpoint has one.
    pub tokenizer_json: Option<PathBuf>,
    /// vocab.txt (WordPiece fallback when there is no tokenizer.json).
    pub vocab_txt: Option<PathBuf>,
    /// vocab.json + merges.txt (byte-level BPE fallback when there is no tokenizer.json).
    pub bpe_files: Option<(PathBuf, PathBuf)>,
    /// A SentencePiece model (spiece.model, sentencepiece.bpe.model or spm.model), converted
    /// when there is no tokenizer.json.
    pub spm_model: Option<PathBuf>,
    /// tokenizer_config.json (lower-casing, model_max_length).
    pub tokenizer_config: Option<PathBuf>,
    /// The weights.
    pub weights: WeightsFile,
}

/// How to reach the Hub.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    /// Never touch the network; only the cache. Also enabled by `HF_HUB_OFFLINE=1`.
    pub offline: bool,
    /// Revision (branch, tag or commit) to use; `main` by default.
    pub revision: Option<String>,
}

impl HubOptions {
    /// True when offline mode was requested here or through `HF_HUB_OFFLINE`.
    pub fn is_offline(&self) -> bool {
        self.offline || env_flag("HF_HUB_OFFLINE") || env_flag("TRANSFORMERS_OFFLINE")
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The Hub cache directory, as `huggingface_hub` computes it: `HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Ok(home) = std::env::var("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home)
        .join(".cache")
        .join("huggingface")
        .join("hub")
}

/// Finds the checkpoint files for `model`: an existing directory is used as is; anything else is
/// taken as a Hub id and looked up in the HF cache, downloading what is missing unless offline.
pub fn locate(model: &str, hub: &HubOptions) -> Result<CheckpointFiles> {
    let dir = Path::new(model);
    if dir.is_dir() {
        return from_dir(model, dir);
    }
    if dir.exists() {
        return Err(Error::ModelNotFound {
            model: model.into(),
            message: "this is a file; pass the checkpoint directory that holds config.json".into(),
        });
    }
    if model.starts_with('.') || model.starts_with('/') || model.matches('/').count() > 1 {
        return Err(Error::ModelNotFound {
            model: model.into(),
            message: "no such directory (and not a Hub id of the form `name` or `owner/name`)"
                .into(),
        });
    }
    from_hub(model, hub)
}

fn from_dir(name: &str, dir: &Path) -> Result<CheckpointFiles> {
    let file = |f: &str| Some(dir.join(f)).filter(|p| p.is_file());
    let config = file("config.json").ok_or_else(|| Error::ModelNotFound {
        model: name.into(),
        message: format!("{} has no config.json", dir.display()),
    })?;
    let weights = if let Some(p) = file("model.safetensors") {
        WeightsFile::Safetensors(p)
    } else if let Some(p) = file("pytorch_model.bin") {
        WeightsFile::PytorchBin(p)
    } else {
        return Err(Error::ModelNotFound {
            model: name.into(),
            message: format!(
                "{} has neither model.safetensors nor pytorch_model.bin",
                dir.display()
            ),
        });
    };
    let files = CheckpointFiles {
        name: name.into(),
        config,
        tokenizer_json: file("tokenizer.json"),
        vocab_txt: file("vocab.txt"),
        bpe_files: file("vocab.json").zip(file("merges.txt")),
        spm_model: crate::sentencepiece::MODEL_FILE_NAMES
            .iter()
            .find_map(|f| file(f)),
        tokenizer_config: file("tokenizer_config.json"),
        weights,
    };
    files.check_tokenizer()?;
    Ok(files)
}

impl CheckpointFiles {
    fn check_tokenizer(&self) -> Result<()> {
        if self.tokenizer_json.is_none()
            && self.vocab_txt.is_none()
            && self.bpe_files.is_none()
            && self.spm_model.is_none()
        {
            return Err(Error::ModelNotFound {
                model: self.name.clone(),
                message: "no tokenizer.json (nor vocab.txt for WordPiece, nor vocab.json + \
                          merges.txt for byte-level BPE, nor a SentencePiece .model); \
                          save the tokenizer next to the model (tokenizer.save_pretrained)"
                    .into(),
            });
        }
        Ok(())
    }
}

/// Finds the checkpoint files of Hub id `model_id` in the HF cache, downloading what is missing
/// unless offline.
fn from_hub(model_id: &str, hub: &HubOptions) -> Result<CheckpointFiles> {
    let cache_dir = hub_cache_dir();
    let revision = hub.revision.clone().unwrap_or_else(|| "main".into());
    let repo = hf_hub::Repo::with_revision(model_id.into(), hf_hub::RepoType::Model, revision);
    let cache = hf_hub::Cache::new(cache_dir.clone()).repo(repo.clone());
    let offline = hub.is_offline();
    let api = if offline {
        None
    } else {
        Some(hub_api(model_id, &cache_dir)?.repo(repo))
    };
    // Why the last download failed (no network, an unknown id, a gated model), so that the
    // error can say it rather than guess.
    let last_failure = std::cell::RefCell::new(None::<String>);
    // Cache first: a file already there never touches the network.
    let get = |file: &str| -> Option<PathBuf> {
        cache.get(file).or_else(|| {
            let api = api.as_ref()?;
            api.get(file)
                .map_err(|e| *last_failure.borrow_mut() = Some(error_chain(&e)))
                .ok()
        })
    };
    let not_found = |what: &str| {
        let cause = last_failure.borrow().clone();
        hub_file_not_found(model_id, &cache_dir, offline, what, cause.as_deref())
    };
    let config = get("config.json").ok_or_else(|| not_found("config.json"))?;
    let weights = if let Some(p) = get("model.safetensors") {
        WeightsFile::Safetensors(p)
    } else if let Some(p) = get("pytorch_model.bin") {
        WeightsFile::PytorchBin(p)
    } else {
        return Err(not_found("model.safetensors (or pytorch_model.bin)"));
    };
    let tokenizer = TokenizerFiles::from_hub(&get);
    let files = CheckpointFiles {
        name: model_id.into(),
        config,
        tokenizer_json: tokenizer.tokenizer_json,
        vocab_txt: tokenizer.vocab_txt,
        bpe_files: tokenizer.bpe_files,
        spm_model: tokenizer.spm_model,
        tokenizer_config: get("tokenizer_config.json"),
        weights,
    };
    files.check_tokenizer()?;
    Ok(files)
}

/// The Hub client, caching into `cache_dir`, authenticated by `HF_TOKEN` and pointed at
/// `HF_ENDPOINT` when they are set.
fn hub_api(model_id: &str, cache_dir: &Path) -> Result<hf_hub::api::sync::Api> {
    let mut builder = hf_hub::api::sync::ApiBuilder::new();
    // A mirror or a private Hub, as the Python client takes it.
    if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    builder
        .with_cache_dir(cache_dir.to_path_buf())
        .with_progress(true)
        .with_token(std::env::var("HF_TOKEN").ok())
        .build()
        .map_err(|e| Error::ModelNotFound {
            model: model_id.into(),
            message: format!("cannot set up the Hub client: {e}"),
        })
}

/// An error with its sources, outermost first: the Hub client's own message is often only
/// "request error", with the cause (a host name that did not resolve) two levels down.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The error for a file (`what`) of `model_id` that is neither in the cache nor, when online,
/// downloadable; `cause` is why the last download failed.
fn hub_file_not_found(
    model_id: &str,
    cache_dir: &Path,
    offline: bool,
    what: &str,
    cause: Option<&str>,
) -> Error {
    Error::ModelNotFound {
        model: model_id.into(),
        message: if offline {
            format!(
                "{what} is not in the Hugging Face cache at {} and offline mode is on; \
                 download it once online (or with `huggingface-cli download {model_id}`), \
                 or pass a local directory",
                cache_dir.display()
            )
        } else {
            let cause = cause.map(|c| format!(" ({c})")).unwrap_or_default();
            format!(
                "{what} could not be found in the cache at {} nor downloaded from the \
                 Hub{cause}; check the id, your network, or HF_TOKEN for gated models; \
                 or pass a local directory",
                cache_dir.display()
            )
        },
    }
}

/// The tokenizer files of a Hub checkpoint: the first kind it has, in the order the tokenizer
/// is built from them.
struct TokenizerFiles {
    tokenizer_json: Option<PathBuf>,
    vocab_txt: Option<PathBuf>,
    bpe_files: Option<(PathBuf, PathBuf)>,
    spm_model: Option<PathBuf>,
}

impl TokenizerFiles {
    /// Fetches (through `get`) only the fallbacks that are needed: each kind is asked for only
    /// when none before it was found.
    fn from_hub(get: &dyn Fn(&str) -> Option<PathBuf>) -> Self {
        let tokenizer_json = get("tokenizer.json");
        let vocab_txt = if tokenizer_json.is_none() {
            get("vocab.txt")
        } else {
            None
        };
        let bpe_files = if tokenizer_json.is_none() && vocab_txt.is_none() {
            get("vocab.json").zip(get("merges.txt"))
        } else {
            None
        };
        let spm_model = if tokenizer_json.is_none() && vocab_txt.is_none() && bpe_files.is_none() {
            crate::sentencepiece::MODEL_FILE_NAMES
                .iter()
                .find_map(|f| get(f))
        } else {
            None
        };
        if spm_model.is_some() {
            // Read from config.json's directory by the conversion; optional, so a miss is fine.
            let _ = get("special_tokens_map.json");
            let _ = get("added_tokens.json");
        }
        Self {
            tokenizer_json,
            vocab_txt,
            bpe_files,
            spm_model,
        }
    }
}

/// Reads and parses a JSON file, naming it in errors.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: path.into(),
        message: format!("not valid JSON: {e}"),
    })
}

/// Opens the weights as a [`VarBuilder`] in `dtype` on `device`. Safetensors are memory-mapped
/// and validated (header and every tensor's extent) before use.
pub fn open_weights(
    weights: &WeightsFile,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let bad = |path: &Path, e: &dyn std::fmt::Display| Error::Checkpoint {
        path: path.into(),
        message: format!(
            "cannot read weights ({e}); the file may be truncated or corrupt: download it again"
        ),
    };
    match weights {
        WeightsFile::Safetensors(path) => {
            validate_safetensors(path)?;
            // SAFETY: the file is mapped read-only; candle requires that it is not modified
            // while mapped. Checkpoint files are not written by bertqa while a model is loaded,
            // and its extent was validated above, so every tensor read stays inside the mapping.
            unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device) }
                .map_err(|e| bad(path, &e))
        }
        WeightsFile::PytorchBin(path) => {
            VarBuilder::from_pth(path, dtype, device).map_err(|e| bad(path, &e))
        }
    }
}

/// Checks that a safetensors file's header parses and that the data it announces is all there.
fn validate_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let err = |message: String| Error::Checkpoint {
        path: path.into(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| err("too short to be a safetensors file (truncated?)".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(err(format!(
            "header length {header_len} exceeds the file ({file_len} bytes): truncated or not safetensors"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| err(format!("cannot read header: {e}")))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| err(format!("header is not valid JSON ({e}): corrupt file")))?;
    let data_len = file_len - 8 - header_len;
    if let Some(map) = header.as_object() {
        for (name, info) in map {
            if name == "__metadata__" {
                continue;
            }
            let end = info
                .get("data_offsets")
                .and_then(|o| o.get(1))
                .and_then(|v| v.as_u64());
            match end {
                Some(end) if end <= data_len => {}
                Some(end) => {
                    return Err(Error::Weights {
                        path: path.into(),
                        tensor: name.clone(),
                        message: format!(
                            "data ends at byte {end} but the file holds only {data_len} bytes of data: \
                             the file is truncated, download it again"
                        ),
                    })
                }
                None => {
                    return Err(Error::Weights {
                        path: path.into(),
                        tensor: name.clone(),
                        message: "no data_offsets in header: corrupt file".into(),
                    })
                }
            }
        }
    }
    Ok(())
}
