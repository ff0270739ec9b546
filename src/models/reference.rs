//! The reference models as an [`Engine`]: windows padded to the longest into one batch.

use candle_core::{DType, Device, Tensor};

use super::qa::{ModelInput, QaModel};
use crate::engine::{Engine, EngineKind, Tokens, WindowLogits};
use crate::error::Result;

/// Runs a reference model ([`QaModel`], candle) on padded batches.
pub struct ReferenceEngine {
    model: Box<dyn QaModel>,
    pad_token_id: u32,
    device: Device,
}

impl ReferenceEngine {
    /// Wraps `model`, padding batches with `pad_token_id` on `device`.
    pub fn new(model: Box<dyn QaModel>, pad_token_id: u32, device: Device) -> Self {
        Self {
            model,
            pad_token_id,
            device,
        }
    }

    /// The model.
    pub fn model(&self) -> &dyn QaModel {
        self.model.as_ref()
    }

    /// Pads windows to the longest and stacks them into model input tensors.
    pub fn padded_input(&self, windows: &[Tokens]) -> Result<ModelInput> {
        let len = windows.iter().map(|w| w.input_ids.len()).max().unwrap_or(0);
        let b = windows.len();
        let mut ids = vec![self.pad_token_id; b * len];
        let mut types = vec![0u32; b * len];
        let mut mask = vec![0u32; b * len];
        for (row, w) in windows.iter().enumerate() {
            let o = row * len;
            let n = w.input_ids.len();
            ids[o..o + n].copy_from_slice(w.input_ids);
            types[o..o + n].copy_from_slice(&w.token_type_ids[..n]);
            mask[o..o + n].iter_mut().for_each(|m| *m = 1);
        }
        let t = |v: Vec<u32>| Tensor::from_vec(v, (b, len), &self.device);
        Ok(ModelInput {
            input_ids: t(ids)?,
            token_type_ids: t(types)?,
            attention_mask: t(mask)?,
        })
    }
}

impl Engine for ReferenceEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Reference
    }

    fn logits(&self, windows: &[Tokens]) -> Result<Vec<WindowLogits>> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let input = self.padded_input(windows)?;
        let logits = self.model.forward(&input, false)?;
        // Reduced-precision models give bf16/f16 logits; decoding reads f32.
        let start: Vec<Vec<f32>> = logits.start.to_dtype(DType::F32)?.to_vec2()?;
        let end: Vec<Vec<f32>> = logits.end.to_dtype(DType::F32)?.to_vec2()?;
        Ok(windows
            .iter()
            .zip(start.into_iter().zip(end))
            .map(|(w, (mut s, mut e))| {
                s.truncate(w.input_ids.len());
                e.truncate(w.input_ids.len());
                (s, e)
            })
            .collect())
    }

    fn is_padded(&self) -> bool {
        true
    }
}
