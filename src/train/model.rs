//! A QA model whose parameters are trainable candle `Var`s, loaded from a checkpoint under
//! Hugging Face's standard names (encoder under its prefix, head `qa_outputs.*`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::data::TrainBatch;
use crate::error::{Error, Result};
use crate::models::{ModelInput, ModelSpec, QaLogits, QaModel};

/// A trainable parameter.
#[derive(Clone, Debug)]
pub struct Param {
    /// Hugging Face name, e.g. `bert.encoder.layer.0.attention.self.query.weight`.
    pub name: String,
    /// The value.
    pub var: Var,
    /// Whether weight decay applies to it.
    pub decay: bool,
}

/// The model being trained: the architecture's forward pass over [`Param`]s.
pub struct TrainableModel {
    model: Arc<dyn QaModel>,
    spec: ModelSpec,
    config: serde_json::Value,
    params: Vec<Param>,
    initialised: Vec<String>,
    /// Per parameter, a `[rows, 1]` mask that zeroes the gradient of the padding row of an
    /// embedding (`nn.Embedding(padding_idx=pad_token_id)` never updates that row).
    padding_masks: Vec<Option<Tensor>>,
    /// The type the forward and backward passes compute in; the parameters stay f32.
    compute_dtype: DType,
}

/// Serves tensors to the architecture's constructor: each one is read from the checkpoint
/// (exact name, or without the encoder prefix for base models saved without one; `gamma`/`beta`
/// for old LayerNorm names) and turned into a `Var`, recorded under its standard name. A missing
/// `qa_outputs.*` is initialised as transformers does (normal weights, zero bias).
struct TrainableWeights {
    source: VarBuilder<'static>,
    init_std: f64,
    rng: Mutex<ChaCha8Rng>,
    recorded: Arc<Mutex<Vec<(String, Var)>>>,
    initialised: Arc<Mutex<Vec<String>>>,
}

impl TrainableWeights {
    fn candidates(name: &str) -> Vec<String> {
        let mut names = vec![name.to_string()];
        if let Some((_, rest)) = name.split_once('.') {
            names.push(rest.to_string());
        }
        names
    }

    fn find(&self, name: &str) -> Option<String> {
        Self::candidates(name)
            .into_iter()
            .find(|n| self.source.contains_tensor(n))
    }

    /// Old checkpoints name LayerNorm parameters `gamma`/`beta`; save them as `weight`/`bias`.
    fn standard_name(name: &str) -> String {
        if let Some(stem) = name.strip_suffix(".gamma") {
            format!("{stem}.weight")
        } else if let Some(stem) = name.strip_suffix(".beta") {
            format!("{stem}.bias")
        } else {
            name.to_string()
        }
    }

    fn init_head(&self, shape: &Shape, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        if name.ends_with(".bias") {
            return Tensor::zeros(shape, DType::F32, dev);
        }
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("initialiser lock poisoned".into()))?;
        let n = shape.elem_count();
        let mut values = Vec::with_capacity(n);
        while values.len() < n {
            // Box–Muller: two uniforms in (0, 1] → two standard normals.
            let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u2;
            values.push((r * theta.cos() * self.init_std) as f32);
            values.push((r * theta.sin() * self.init_std) as f32);
        }
        values.truncate(n);
        Tensor::from_vec(values, shape, dev)
    }

    fn record(&self, name: &str, tensor: Tensor) -> candle_core::Result<Tensor> {
        let var = Var::from_tensor(&tensor.to_dtype(DType::F32)?.contiguous()?)?;
        let t = var.as_tensor().clone();
        self.recorded
            .lock()
            .map_err(|_| candle_core::Error::Msg("parameter lock poisoned".into()))?
            .push((Self::standard_name(name), var));
        Ok(t)
    }

    fn existing(&self, name: &str) -> Option<Tensor> {
        let standard = Self::standard_name(name);
        self.recorded.lock().ok().and_then(|r| {
            r.iter()
                .find(|(n, _)| *n == standard)
                .map(|(_, v)| v.as_tensor().clone())
        })
    }
}

impl SimpleBackend for TrainableWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        _dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(t) = self.existing(name) {
            if t.shape() != &s {
                candle_core::bail!(
                    "tensor `{name}` requested with shapes {s:?} and {:?}",
                    t.shape()
                );
            }
            return Ok(t);
        }
        let tensor = match self.find(name) {
            Some(src) => self.source.get(s, &src)?,
            None if name.starts_with("qa_outputs.") => {
                self.initialised
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("lock poisoned".into()))?
                    .push(name.to_string());
                self.init_head(&s, name, dev)?
            }
            None => candle_core::bail!("tensor `{name}` is missing from the checkpoint"),
        };
        self.record(name, tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(t) = self.existing(name) {
            return Ok(t);
        }
        match self.find(name) {
            Some(src) => {
                let t = self.source.get_unchecked(&src)?;
                self.record(name, t)
            }
            None => candle_core::bail!("tensor `{name}` is missing from the checkpoint"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.find(name).is_some()
    }
}

/// Sets every dropout probability of a config.json to 0 (`*dropout*` keys holding numbers), for
/// deterministic gradient checks.
pub fn zero_dropout(config: &mut serde_json::Value) {
    if let Some(map) = config.as_object_mut() {
        for (key, value) in map.iter_mut() {
            if key.contains("dropout") && value.is_number() {
                *value = serde_json::json!(0.0);
            }
        }
    }
}

/// Masks for the embeddings that transformers creates with `padding_idx = pad_token_id` (the
/// architecture's `padding_tables`), when config.json declares a padding token.
fn padding_masks(
    spec: &ModelSpec,
    params: &[Param],
    device: &Device,
) -> Result<Vec<Option<Tensor>>> {
    let Some(pad) = spec.pad_token_id() else {
        return Ok(vec![None; params.len()]);
    };
    let tables = spec.architecture().padding_tables;
    params
        .iter()
        .map(|p| {
            let padded = tables
                .iter()
                .any(|t| p.name.ends_with(&format!("{t}.weight")));
            let rows = p.var.as_tensor().dim(0)?;
            if !padded || pad as usize >= rows {
                return Ok(None);
            }
            let mut mask = vec![1f32; rows];
            mask[pad as usize] = 0.0;
            Ok(Some(Tensor::from_vec(mask, (rows, 1), device)?))
        })
        .collect()
}

impl TrainableModel {
    /// Builds the architecture of `config` with trainable copies of the tensors in `weights`;
    /// a missing QA head is initialised from `init_seed` with std `initializer_range`.
    pub fn new(
        config: &serde_json::Value,
        weights: VarBuilder<'static>,
        init_seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let spec = ModelSpec::parse(config)?;
        let init_std = spec.initializer_range();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let initialised = Arc::new(Mutex::new(Vec::new()));
        let backend = TrainableWeights {
            source: weights,
            init_std,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(init_seed)),
            recorded: recorded.clone(),
            initialised: initialised.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let model = spec.reference_model(vb)?;
        fn take<T>(m: &Mutex<Vec<T>>) -> Result<Vec<T>> {
            m.lock()
                .map(|mut v| std::mem::take(&mut *v))
                .map_err(|_| Error::InvalidInput("parameter lock poisoned".into()))
        }
        let params: Vec<Param> = take(&recorded)?
            .into_iter()
            .map(|(name, var)| Param {
                decay: super::optim::decays(&name),
                name,
                var,
            })
            .collect();
        let initialised: Vec<String> = take(&initialised)?;
        if !initialised.is_empty() {
            tracing::info!("newly initialised: {}", initialised.join(", "));
        }
        let mut config = config.clone();
        if let Some(map) = config.as_object_mut() {
            map.insert("architectures".into(), serde_json::json!([spec.qa_class()]));
        }
        let padding_masks = padding_masks(&spec, &params, device)?;
        Ok(Self {
            model: Arc::from(model),
            spec,
            config,
            params,
            initialised,
            padding_masks,
            compute_dtype: DType::F32,
        })
    }

    /// Computes the forward and backward passes in `dtype` (bf16: mixed precision) while the
    /// parameters, their gradients and the optimizer stay f32. f16 is refused: it needs loss
    /// scaling, which training does not do.
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(Error::InvalidInput(format!(
                "training computes in f32 or bf16 (mixed precision), not {dtype:?}: f16 would \
                 need loss scaling"
            )));
        }
        self.compute_dtype = dtype;
        Ok(())
    }

    /// The model to run: the one built over the f32 parameters, or in mixed precision one built
    /// for this pass over their casts (the casts are differentiable, so gradients reach the f32
    /// parameters; building per pass keeps the casts in step with the optimizer's updates).
    fn compute_model(&self) -> Result<Arc<dyn QaModel>> {
        if self.compute_dtype == DType::F32 {
            return Ok(self.model.clone());
        }
        let dtype = self.compute_dtype;
        let mut device = Device::Cpu;
        let mut tensors = HashMap::with_capacity(self.params.len());
        for p in &self.params {
            device = p.var.device().clone();
            tensors.insert(p.name.clone(), p.var.as_tensor().to_dtype(dtype)?);
        }
        let vb = VarBuilder::from_tensors(tensors, dtype, &device);
        Ok(Arc::from(self.spec.reference_model(vb)?))
    }

    /// The parameters, in the order the architecture creates them.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Parameters that the checkpoint lacked and were initialised (the QA head of a base model).
    pub fn initialised(&self) -> &[String] {
        &self.initialised
    }

    /// The parsed config.json: architecture and limits.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// config.json for the trained model (`architectures` set to the QA class).
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// Forward pass.
    pub fn forward(&self, input: &ModelInput, train: bool) -> Result<QaLogits> {
        Ok(self.compute_model()?.forward(input, train)?)
    }

    /// `(CE(start) + CE(end)) / 2`, each cross-entropy averaged over the batch, from a
    /// training-mode forward pass (dropout as the config sets it; [`zero_dropout`] turns it off).
    /// Returns the loss and the logits.
    pub fn loss(&self, batch: &TrainBatch) -> Result<(Tensor, QaLogits)> {
        let logits = self.forward(&batch.input, true)?;
        // The loss in f32 whatever the compute type, as autocast does.
        let logits = QaLogits {
            start: logits.start.to_dtype(DType::F32)?,
            end: logits.end.to_dtype(DType::F32)?,
        };
        let start = candle_nn::loss::cross_entropy(&logits.start, &batch.start_positions)?;
        let end = candle_nn::loss::cross_entropy(&logits.end, &batch.end_positions)?;
        Ok((((start + end)? / 2.0)?, logits))
    }

    /// Back-propagates `loss` and returns each parameter's gradient (in [`Self::params`] order;
    /// `None` for a parameter the loss does not depend on). Embedding rows of the padding token get
    /// a zero gradient, as transformers' `padding_idx` embeddings do.
    pub fn backward(&self, loss: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let mut store = loss.backward()?;
        self.params
            .iter()
            .zip(&self.padding_masks)
            .map(|(p, mask)| {
                Ok(match (store.remove(p.var.as_tensor()), mask) {
                    (Some(g), Some(m)) => Some(g.broadcast_mul(m)?),
                    (g, _) => g,
                })
            })
            .collect()
    }

    /// Current parameter values by name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().detach()))
            .collect()
    }
}
