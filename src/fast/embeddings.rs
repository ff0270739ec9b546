//! Token, position and segment embeddings of the fast engine, summed and normalised per token
//! into packed `[tokens, width]` rows.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::grow;
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
    /// Rows of `position_embeddings`; 0 for models without absolute positions (DeBERTa-v3).
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
    /// MobileBERT's narrower, transformed word vectors.
    pub word_transform: Option<WordTransform>,
}

/// MobileBERT's word vectors: `[next, token, previous]` words side by side (zeros past either
/// end of the window), then mapped to the hidden width, before positions and types are added.
#[derive(Debug)]
pub struct WordTransform {
    /// Width of one word vector.
    pub word_width: usize,
    /// Whether neighbours are stacked (`trigram_input`).
    pub trigram: bool,
    /// `embedding_transformation`: word width (× 3 with trigrams) → hidden width.
    pub transformation: DenseLinear,
}

/// The embedding tables of a fast encoder.
#[derive(Debug)]
pub struct Embeddings {
    width: usize,
    /// MobileBERT's words: narrower, transformed before the sum.
    word_transform: Option<WordTransform>,
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
            _ if spec.max_positions == 0 => Vec::new(),
            _ => table(spec.max_positions, "position_embeddings")?,
        };
        let word_width = spec.word_transform.as_ref().map_or(e, |t| t.word_width);
        let word = vb
            .get((spec.vocab_size, word_width), "word_embeddings.weight")?
            .flatten_all()?
            .to_vec1()?;
        Ok(Self {
            width: e,
            word_transform: spec.word_transform,
            word,
            position,
            token_type: spec
                .type_vocab_size
                .map(|rows| table(rows, "token_type_embeddings"))
                .transpose()?,
            segment_ids: spec.segment_ids,
            norm: Norm::layer_norm(e, spec.eps, vb.pp("LayerNorm"))?,
            position_ids: spec.position_ids,
            project: None,
        })
    }

    /// Projects the normalised embeddings through `project` (ELECTRA's `embeddings_project`,
    /// ALBERT's `embedding_hidden_mapping_in`).
    pub fn with_projection(mut self, project: DenseLinear) -> Self {
        self.project = Some(project);
        self
    }

    /// Normalises with `norm` instead of the `LayerNorm` (MobileBERT's `NoNorm`).
    pub fn with_norm(mut self, norm: Norm) -> Self {
        self.norm = norm;
        self
    }

    fn word_width(&self) -> usize {
        self.word_transform
            .as_ref()
            .map_or(self.width, |t| t.word_width)
    }

    fn vocab_size(&self) -> usize {
        self.word.len() / self.word_width()
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
        if let Some(transform) = &self.word_transform {
            self.transformed_words(windows, total, transform, &mut x)?;
        }
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

    /// Writes MobileBERT's transformed word vectors into the rows of `x`.
    fn transformed_words(
        &self,
        windows: &[Tokens],
        total: usize,
        transform: &WordTransform,
        x: &mut [f32],
    ) -> Result<()> {
        let we = transform.word_width;
        let k = if transform.trigram { 3 * we } else { we };
        let mut words = Vec::new();
        grow(&mut words, total * k);
        let mut rows = words.chunks_exact_mut(k);
        for w in windows {
            let ids = w.input_ids;
            for i in 0..ids.len() {
                let Some(row) = rows.next() else { break };
                let neighbours = match transform.trigram {
                    true => [
                        ids.get(i + 1),
                        ids.get(i),
                        i.checked_sub(1).map(|p| &ids[p]),
                    ],
                    false => [ids.get(i), None, None],
                };
                for (part, id) in row.chunks_exact_mut(we).zip(neighbours) {
                    match id {
                        Some(&id) => part.copy_from_slice(self.word_row(id as usize)?),
                        None => part.fill(0.0),
                    }
                }
            }
        }
        transform.transformation.forward(&words, total, x);
        Ok(())
    }

    /// The word vector of token `id`.
    fn word_row(&self, id: usize) -> Result<&[f32]> {
        let we = self.word_width();
        self.word.get(id * we..(id + 1) * we).ok_or_else(|| {
            Error::InvalidInput(format!(
                "token id {id} is outside the vocabulary of {} entries",
                self.vocab_size()
            ))
        })
    }

    /// Adds one token's position and segment rows to `out`, which holds its word vector
    /// already when the words are transformed, and gets it here otherwise.
    fn embed_token(
        &self,
        out: &mut [f32],
        id: usize,
        pos: usize,
        segment: usize,
        window_len: usize,
    ) -> Result<()> {
        let e = self.width;
        if self.word_transform.is_none() {
            out.copy_from_slice(self.word_row(id)?);
        }
        if !self.position.is_empty() {
            if (pos + 1) * e > self.position.len() {
                return Err(Error::InvalidInput(format!(
                    "a window of {window_len} tokens is longer than the model's {} positions",
                    self.position.len() / e
                )));
            }
            let p = &self.position[pos * e..(pos + 1) * e];
            out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
        }
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
