//! Token, position and segment embeddings of the fast engine, summed and normalised per token
//! into packed `[tokens, width]` rows.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::layer::Norm;
use crate::engine::Tokens;
use crate::error::{Error, Result};
use crate::kernels::linear::DenseLinear;

/// How position ids are assigned.
#[derive(Clone, Copy, Debug)]
pub enum PositionIds {
    /// 0, 1, 2, … (BERT, ELECTRA, DistilBERT).
    FromZero,
    /// RoBERTa's `create_position_ids_from_input_ids`: padding_idx + running count of
    /// non-padding tokens, and padding_idx on padding tokens.
    AfterPadding(u32),
}

/// What an architecture's `embeddings` module holds, for [`Embeddings::load`].
#[derive(Debug)]
pub struct EmbeddingSpec {
    /// Rows of `word_embeddings`.
    pub vocab_size: usize,
    /// Width of every table.
    pub width: usize,
    /// Rows of `position_embeddings`.
    pub max_positions: usize,
    /// Rows of `token_type_embeddings`; `None` for models without the table.
    pub type_vocab_size: Option<usize>,
    /// Whether the tokenizer's segment ids select the token-type row; where they are not a
    /// model input (RoBERTa) every token gets type 0.
    pub segment_ids: bool,
    /// How positions are numbered.
    pub position_ids: PositionIds,
    /// A fixed position table to use when the checkpoint stores none (DistilBERT's sinusoidal
    /// embeddings).
    pub fixed_positions: Option<Tensor>,
    /// Epsilon of the `LayerNorm`.
    pub eps: f64,
}

/// The embedding tables of a fast encoder.
#[derive(Debug)]
pub struct Embeddings {
    width: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Option<Vec<f32>>,
    segment_ids: bool,
    norm: Norm,
    position_ids: PositionIds,
    /// A projection from the embedding width to the hidden width (ELECTRA).
    project: Option<DenseLinear>,
}

impl Embeddings {
    /// Loads `word_embeddings`, `position_embeddings`, `token_type_embeddings` and `LayerNorm`
    /// from `vb` (the `embeddings` module) as `spec` describes them.
    pub fn load(vb: &VarBuilder, spec: EmbeddingSpec) -> candle_core::Result<Self> {
        let e = spec.width;
        let table = |rows: usize, name: &str| -> candle_core::Result<Vec<f32>> {
            vb.get((rows, e), &format!("{name}.weight"))?
                .flatten_all()?
                .to_vec1()
        };
        let positions = vb.pp("position_embeddings");
        let position = match spec.fixed_positions {
            Some(fixed) if !positions.contains_tensor("weight") => {
                fixed.flatten_all()?.to_vec1()?
            }
            _ => table(spec.max_positions, "position_embeddings")?,
        };
        Ok(Self {
            width: e,
            word: table(spec.vocab_size, "word_embeddings")?,
            position,
            token_type: spec
                .type_vocab_size
                .map(|rows| table(rows, "token_type_embeddings"))
                .transpose()?,
            segment_ids: spec.segment_ids,
            norm: Norm::load(e, spec.eps, vb.pp("LayerNorm"))?,
            position_ids: spec.position_ids,
            project: None,
        })
    }

    /// Projects the normalised embeddings through `project` (ELECTRA's `embeddings_project`).
    pub fn with_projection(mut self, project: DenseLinear) -> Self {
        self.project = Some(project);
        self
    }

    fn vocab_size(&self) -> usize {
        self.word.len() / self.width
    }

    /// Embeds every window into consecutive rows of the returned `[tokens, hidden]` matrix.
    pub(super) fn forward(
        &self,
        windows: &[Tokens],
        total: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let e = self.width;
        let mut x = std::mem::take(out);
        x.clear();
        x.resize(total * e, 0.0);
        let mut rows = x.chunks_exact_mut(e);
        for w in windows {
            let mut seen = 0u32;
            for (i, &id) in w.input_ids.iter().enumerate() {
                let pos = match self.position_ids {
                    PositionIds::FromZero => i,
                    PositionIds::AfterPadding(pad) if id == pad => pad as usize,
                    PositionIds::AfterPadding(pad) => {
                        seen += 1;
                        (pad + seen) as usize
                    }
                };
                let segment = match self.segment_ids {
                    true => w.token_type_ids.get(i).copied().unwrap_or(0) as usize,
                    false => 0,
                };
                let Some(row) = rows.next() else { break };
                self.embed_token(row, id as usize, pos, segment, w.input_ids.len())?;
            }
        }
        self.norm.apply(&mut x, None);
        match &self.project {
            Some(project) => {
                out.resize(total * project.out_features(), 0.0);
                project.forward(&x, total, out);
            }
            None => *out = x,
        }
        Ok(())
    }

    /// Writes the sum of one token's word, position and segment rows to `out`.
    fn embed_token(
        &self,
        out: &mut [f32],
        id: usize,
        pos: usize,
        segment: usize,
        window_len: usize,
    ) -> Result<()> {
        let e = self.width;
        if id >= self.vocab_size() {
            return Err(Error::InvalidInput(format!(
                "token id {id} is outside the vocabulary of {} entries",
                self.vocab_size()
            )));
        }
        if (pos + 1) * e > self.position.len() {
            return Err(Error::InvalidInput(format!(
                "a window of {window_len} tokens is longer than the model's {} positions",
                self.position.len() / e
            )));
        }
        out.copy_from_slice(&self.word[id * e..(id + 1) * e]);
        let p = &self.position[pos * e..(pos + 1) * e];
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
        if let Some(types) = &self.token_type {
            if (segment + 1) * e > types.len() {
                return Err(Error::InvalidInput(format!(
                    "token type {segment} is outside the model's {} types",
                    types.len() / e
                )));
            }
            let tt = &types[segment * e..(segment + 1) * e];
            out.iter_mut().zip(tt).for_each(|(o, v)| *o += v);
        }
        Ok(())
    }
}
