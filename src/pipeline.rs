//! The question-answering pipeline: tokenization into windows, batched model runs, span decoding.
//!
//! The three stages are public on their own ([`QaPipeline::prepare`], [`QaPipeline::run_windows`],
//! [`decode`]) so that a server can tokenize on worker threads and batch windows of many requests
//! into one model call; [`QaPipeline::answer`] chains them for callers that just want answers.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::checkpoint::{self, CheckpointFiles, HubOptions};
use crate::decode::{decode, Answer, DecodeParams, Decoded};
use crate::device::FloatType;
use crate::engine::{Engine, EngineKind, Precision, Tokens, WindowLogits};
use crate::error::{Error, Result};
use crate::features::{QaTokenizer, Window};
use crate::kernels::int8::QuantizedLinear;
use crate::kernels::sgemm::PackedWeights;
use crate::models::{ModelSpec, QaModel, ReferenceEngine};
pub use crate::params::QaParams;

/// One question about one context.
#[derive(Clone, Debug)]
pub struct QaRequest {
    /// The question.
    pub question: String,
    /// The passage that holds the answer.
    pub context: String,
    /// Parameters (defaults as the pipeline).
    pub params: QaParams,
}

impl QaRequest {
    /// A request with default parameters.
    pub fn new(question: impl Into<String>, context: impl Into<String>) -> Self {
        Self {
            question: question.into(),
            context: context.into(),
            params: QaParams::default(),
        }
    }
}

/// A request cut into windows, ready to be batched.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The context (needed to cut answers out).
    pub context: String,
    /// Its windows, in order.
    pub windows: Vec<Window>,
    /// Decoding parameters.
    pub decode_params: DecodeParams,
}

impl Prepared {
    /// The answers, from the logits of its windows (in window order, as
    /// [`QaPipeline::run_prepared`] gives them).
    pub fn answers(&self, logits: &[WindowLogits]) -> Decoded {
        decode(&self.context, &self.windows, logits, &self.decode_params)
    }
}

/// Options for loading a pipeline.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Hub access (offline mode, revision).
    pub hub: HubOptions,
    /// Device to run on (see [`crate::DeviceChoice::open`]). Off the CPU the reference models
    /// run.
    pub device: Device,
    /// Floating-point type of the reference models' weights and activations; reduced precision
    /// only on a GPU.
    pub dtype: FloatType,
    /// Most windows per model call.
    pub batch_size: usize,
    /// Longest context accepted, in characters (bounds memory: windows are built all at once).
    pub max_context_chars: usize,
    /// Which implementation runs the model.
    pub engine: EngineChoice,
    /// Arithmetic of the fast engine's linear layers ([`Precision::Int8`] needs the fast
    /// engine).
    pub precision: Precision,
}

/// Which implementation runs the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineChoice {
    /// The fast engine ([`crate::fast`]) where it covers the architecture and the device is
    /// the CPU; the reference models otherwise.
    #[default]
    Auto,
    /// Always the reference models of [`crate::models`] (the code that also trains).
    Reference,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            hub: HubOptions::default(),
            device: Device::Cpu,
            dtype: FloatType::F32,
            batch_size: 8,
            max_context_chars: DEFAULT_MAX_CONTEXT_CHARS,
            engine: EngineChoice::Auto,
            precision: Precision::F32,
        }
    }
}

/// Default limit on context length: one million characters (about 4,000 windows).
pub const DEFAULT_MAX_CONTEXT_CHARS: usize = 1_000_000;

/// A loaded model and tokenizer that answers questions.
pub struct QaPipeline {
    tokenizer: QaTokenizer,
    engine: Box<dyn Engine>,
    spec: ModelSpec,
    files: CheckpointFiles,
    device: Device,
    batch_size: usize,
    max_context_chars: usize,
}

impl QaPipeline {
    /// Loads `model` (a directory or a Hub id).
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        let files = checkpoint::locate(model, &options.hub)?;
        Self::from_files(files, options)
    }

    /// Loads a located checkpoint.
    pub fn from_files(files: CheckpointFiles, options: &LoadOptions) -> Result<Self> {
        let config = checkpoint::read_json(&files.config)?;
        options.dtype.check_device(&options.device)?;
        let vb = checkpoint::open_weights(&files.weights, options.dtype.dtype(), &options.device)?;
        let weights = files.weights.path().to_path_buf();
        Self::from_var_builder(files, &config, vb, options).map_err(|e| match e {
            Error::Candle(err) => Error::Checkpoint {
                path: weights,
                message: format!("does not fit config.json: {err}"),
            },
            other => other,
        })
    }

    /// Builds a pipeline from weights in memory, named as in a checkpoint (e.g. those of a
    /// model being fine-tuned), with the tokenizer of `files`. The engine is chosen as
    /// [`QaPipeline::load`] chooses it. The fast engine copies the weights into its own layout,
    /// so build a new pipeline after the weights change.
    pub fn from_tensors(
        files: CheckpointFiles,
        config: &serde_json::Value,
        tensors: HashMap<String, Tensor>,
        options: &LoadOptions,
    ) -> Result<Self> {
        options.dtype.check_device(&options.device)?;
        let vb = VarBuilder::from_tensors(tensors, options.dtype.dtype(), &options.device);
        Self::from_var_builder(files, config, vb, options)
    }

    fn from_var_builder(
        files: CheckpointFiles,
        config: &serde_json::Value,
        vb: VarBuilder<'static>,
        options: &LoadOptions,
    ) -> Result<Self> {
        let spec = ModelSpec::parse(config)?;
        let tokenizer = QaTokenizer::from_checkpoint(&files, &spec)?;
        if options.engine == EngineChoice::Auto && options.device.is_cpu() {
            if let Some(fast) = spec.fast_model(&vb, options.precision)? {
                tracing::debug!(
                    f32_products = PackedWeights::kernel_description(),
                    int8_products = (options.precision == Precision::Int8)
                        .then(QuantizedLinear::kernel_description),
                    "fast engine"
                );
                return Ok(Self::assemble(
                    files,
                    tokenizer,
                    Box::new(fast),
                    spec,
                    options,
                ));
            }
        }
        if options.precision != Precision::F32 && !options.device.is_cpu() {
            return Err(Error::InvalidInput(
                "int8 runs on the CPU's fast engine only: drop the quantization option on a GPU \
                 (or use --dtype bf16 there)"
                    .into(),
            ));
        }
        if options.precision != Precision::F32 {
            return Err(Error::InvalidInput(format!(
                "int8 runs on the fast engine, which does not cover this checkpoint ({}) with \
                 these options; it runs in f32 only: drop the quantization option",
                spec.model_type()
            )));
        }
        let model = spec.reference_model(vb)?;
        // The weights were copied to the device on this thread's stream; other threads (the
        // server's model thread) must not use them before the copies are done.
        options.device.synchronize()?;
        Ok(Self::with_reference_model(
            files, tokenizer, model, spec, options,
        ))
    }

    /// Wraps a model built elsewhere (e.g. one being fine-tuned) with the tokenizer of `files`;
    /// `config` is the model's config.json.
    pub fn from_model(
        files: CheckpointFiles,
        config: &serde_json::Value,
        model: Box<dyn QaModel>,
        options: &LoadOptions,
    ) -> Result<Self> {
        let spec = ModelSpec::parse(config)?;
        let tokenizer = QaTokenizer::from_checkpoint(&files, &spec)?;
        Ok(Self::with_reference_model(
            files, tokenizer, model, spec, options,
        ))
    }

    fn with_reference_model(
        files: CheckpointFiles,
        tokenizer: QaTokenizer,
        model: Box<dyn QaModel>,
        spec: ModelSpec,
        options: &LoadOptions,
    ) -> Self {
        let pad = tokenizer.pad_token_id();
        let engine = ReferenceEngine::new(model, pad, options.device.clone());
        Self::assemble(files, tokenizer, Box::new(engine), spec, options)
    }

    fn assemble(
        files: CheckpointFiles,
        tokenizer: QaTokenizer,
        engine: Box<dyn Engine>,
        spec: ModelSpec,
        options: &LoadOptions,
    ) -> Self {
        Self {
            tokenizer,
            engine,
            spec,
            files,
            device: options.device.clone(),
            batch_size: options.batch_size.max(1),
            max_context_chars: options.max_context_chars,
        }
    }

    /// The checkpoint's parsed config.json: its architecture and limits.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The checkpoint's files.
    pub fn files(&self) -> &CheckpointFiles {
        &self.files
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &QaTokenizer {
        &self.tokenizer
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The engine that runs the model.
    pub fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    /// Whether the fast engine runs the model.
    pub fn is_fast(&self) -> bool {
        self.engine.kind() == EngineKind::Fast
    }

    /// Default window length: min(tokenizer's model_max_length, 384, position embeddings).
    pub fn default_max_seq_len(&self) -> usize {
        self.tokenizer
            .model_max_length()
            .unwrap_or(usize::MAX)
            .min(384)
            .min(self.spec.max_input_len())
    }

    /// Validates a request and cuts it into windows.
    pub fn prepare(&self, request: &QaRequest) -> Result<Prepared> {
        if request.question.trim().is_empty() {
            return Err(Error::InvalidInput("the question is empty".into()));
        }
        if request.context.trim().is_empty() {
            return Err(Error::InvalidInput("the context is empty".into()));
        }
        let chars = request.context.chars().count();
        if chars > self.max_context_chars {
            return Err(Error::InvalidInput(format!(
                "the context has {chars} characters, over the limit of {}; raise the limit \
                 (--max-context-chars) or split the text",
                self.max_context_chars
            )));
        }
        let p = &request.params;
        let max_seq_len = p.max_seq_len.unwrap_or_else(|| self.default_max_seq_len());
        if max_seq_len > self.spec.max_input_len() {
            return Err(Error::InvalidParameter {
                name: "max_seq_len",
                message: format!(
                    "{max_seq_len} exceeds the model's {} position embeddings",
                    self.spec.max_input_len()
                ),
            });
        }
        let doc_stride = p.doc_stride.unwrap_or((max_seq_len / 2).min(128));
        if doc_stride > max_seq_len {
            return Err(Error::InvalidParameter {
                name: "doc_stride",
                message: format!("{doc_stride} is larger than max_seq_len {max_seq_len}"),
            });
        }
        let decode = p.decode_params();
        if decode.top_k == 0 {
            return Err(Error::InvalidParameter {
                name: "top_k",
                message: "must be at least 1".into(),
            });
        }
        if decode.max_answer_len == 0 {
            return Err(Error::InvalidParameter {
                name: "max_answer_len",
                message: "must be at least 1".into(),
            });
        }
        let windows =
            self.tokenizer
                .windows(&request.question, &request.context, max_seq_len, doc_stride)?;
        Ok(Prepared {
            context: request.context.clone(),
            windows,
            decode_params: decode,
        })
    }

    /// Runs the model on windows as one batch; returns each window's start and end logits
    /// (one per token).
    pub fn run_windows(&self, windows: &[&Window]) -> Result<Vec<WindowLogits>> {
        self.run_tokens(&tokens_of(windows))
    }

    /// [`QaPipeline::run_windows`] for answering: the logits of tokens that cannot start or
    /// end an answer (those of each window's `p_mask`, which decoding masks before reading
    /// them) may be left uncomputed, as NaN (see [`Engine::answer_logits`]).
    pub fn answer_logits(&self, windows: &[&Window]) -> Result<Vec<WindowLogits>> {
        let _flush = crate::fpenv::FlushGuard::new();
        let masks: Vec<&[bool]> = windows.iter().map(|w| &w.p_mask[..]).collect();
        self.engine.answer_logits(&tokens_of(windows), &masks)
    }

    /// Runs the model on token windows as one batch and returns each window's start and end
    /// logits (one per token).
    pub fn run_tokens(&self, windows: &[Tokens]) -> Result<Vec<WindowLogits>> {
        if let Some(w) = windows
            .iter()
            .find(|w| w.token_type_ids.len() != w.input_ids.len())
        {
            return Err(Error::InvalidInput(format!(
                "a window has {} token ids but {} token type ids; give one type per token",
                w.input_ids.len(),
                w.token_type_ids.len()
            )));
        }
        let _flush = crate::fpenv::FlushGuard::new();
        self.engine.logits(windows)
    }

    /// Runs every window of `prepared` through the model, batching windows of similar length,
    /// and returns the logits of each request's windows in order, as
    /// [`QaPipeline::answer_logits`] gives them (tokens of `p_mask` may be NaN). Batches run side
    /// by side on the rayon pool; `on_batch` is called from the workers, in the order batches
    /// finish, with the number of windows each one held (for progress bars).
    pub fn run_prepared(
        &self,
        prepared: &[Prepared],
        on_batch: impl Fn(usize) + Sync,
    ) -> Result<Vec<Vec<WindowLogits>>> {
        let mut all: Vec<(usize, usize, &Window)> = prepared
            .iter()
            .enumerate()
            .flat_map(|(r, p)| {
                p.windows
                    .iter()
                    .enumerate()
                    .map(move |(w, win)| (r, w, win))
            })
            .collect();
        // Sorting by length keeps padding (computed for nothing) small.
        all.sort_by_key(|(_, _, w)| std::cmp::Reverse(w.len()));
        // Batches run side by side, one per worker: each keeps its core busy from start to
        // end, with no wait between the steps of a forward pass; a worker without a batch of
        // its own helps the others through their parallel steps.
        let run = |chunk: &[(usize, usize, &Window)]| {
            let windows: Vec<&Window> = chunk.iter().map(|(_, _, w)| *w).collect();
            let logits = self.answer_logits(&windows)?;
            on_batch(chunk.len());
            Ok(logits)
        };
        let batch_size = self.batch_size.max(1);
        let batches = if self.device.is_cpu() {
            all.par_chunks(batch_size)
                .map(run)
                .collect::<Result<Vec<_>>>()?
        } else {
            // A GPU runs one batch at a time anyway; from one thread its work stays on one
            // stream, in order.
            all.chunks(batch_size)
                .map(run)
                .collect::<Result<Vec<_>>>()?
        };
        let mut out: Vec<Vec<WindowLogits>> = prepared
            .iter()
            .map(|p| vec![(Vec::new(), Vec::new()); p.windows.len()])
            .collect();
        for ((r, w, _), l) in all.iter().zip(batches.into_iter().flatten()) {
            out[*r][*w] = l;
        }
        Ok(out)
    }

    /// Answers a batch of requests; windows of all of them are batched together.
    pub fn answer(&self, requests: &[QaRequest]) -> Result<Vec<Vec<Answer>>> {
        let prepared = requests
            .iter()
            .map(|r| self.prepare(r))
            .collect::<Result<Vec<_>>>()?;
        let logits = self.run_prepared(&prepared, |_| {})?;
        Ok(prepared
            .iter()
            .zip(&logits)
            .map(|(p, l)| p.answers(l).answers)
            .collect())
    }

    /// Answers one question.
    pub fn answer_one(&self, request: &QaRequest) -> Result<Vec<Answer>> {
        Ok(self
            .answer(std::slice::from_ref(request))?
            .pop()
            .unwrap_or_default())
    }
}

/// The model's view of windows: their token ids and types.
fn tokens_of<'a>(windows: &[&'a Window]) -> Vec<Tokens<'a>> {
    windows
        .iter()
        .map(|w| Tokens {
            input_ids: w.input_ids(),
            token_type_ids: w.token_type_ids(),
        })
        .collect()
}
