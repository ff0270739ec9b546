//! Question + context → model windows ("features"), exactly as the transformers
//! question-answering pipeline builds them with a fast tokenizer: question first, truncation
//! `only_second`, overflowing windows that overlap by `doc_stride` tokens, and a `p_mask` that
//! leaves only context tokens (and the CLS token) as possible answers.
//!
//! [`QaTokenizer::from_checkpoint`] (in `load`) builds the tokenizer a checkpoint asks for;
//! this module cuts question + context into [`Window`]s with it.

mod load;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokenizers::{
    Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{Error, Result};

/// One window of a (question, context) pair, ready for the model.
#[derive(Clone, Debug)]
pub struct Window {
    /// The tokenizer's encoding of this window (ids, offsets in characters, word ids).
    pub encoding: Encoding,
    /// `true` for tokens that cannot be part of an answer (question, special tokens, padding).
    pub p_mask: Vec<bool>,
}

impl Window {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.encoding.get_ids().len()
    }

    /// True for a window without tokens (never produced by [`QaTokenizer::windows`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token ids.
    pub fn input_ids(&self) -> &[u32] {
        self.encoding.get_ids()
    }

    /// Segment ids (0 question, 1 context).
    pub fn token_type_ids(&self) -> &[u32] {
        self.encoding.get_type_ids()
    }

    /// Character offsets of every token into its own sequence (question or context).
    pub fn offsets(&self) -> &[(usize, usize)] {
        self.encoding.get_offsets()
    }
}

/// A checkpoint's tokenizer, set up for question answering.
pub struct QaTokenizer {
    base: Tokenizer,
    /// Tokenizers with truncation set, per (max_seq_len, doc_stride).
    truncating: RwLock<HashMap<(usize, usize), Arc<Tokenizer>>>,
    cls_token_id: Option<u32>,
    pad_token_id: u32,
    model_max_length: Option<usize>,
}

impl QaTokenizer {
    /// The underlying `tokenizers` tokenizer (no truncation, no padding).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.base
    }

    /// `model_max_length` from tokenizer_config.json, when set to a real limit.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// Id used to pad batches.
    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id
    }

    fn truncating(&self, max_seq_len: usize, doc_stride: usize) -> Result<Arc<Tokenizer>> {
        let key = (max_seq_len, doc_stride);
        if let Some(t) = self
            .truncating
            .read()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(t);
        }
        let mut tok = self.base.clone();
        tok.with_truncation(Some(TruncationParams {
            max_length: max_seq_len,
            strategy: TruncationStrategy::OnlySecond,
            stride: doc_stride,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let tok = Arc::new(tok);
        if let Ok(mut map) = self.truncating.write() {
            map.insert(key, tok.clone());
        }
        Ok(tok)
    }

    /// Context tokens that fit into a window of `max_seq_len` tokens beside `question` (and the
    /// special tokens of a pair), and the question's length in tokens; fails when none fit.
    pub fn context_room(&self, question: &str, max_seq_len: usize) -> Result<(usize, usize)> {
        let question_tokens = self
            .base
            .encode(question, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .len();
        let specials = self
            .base
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        let used = question_tokens + specials;
        match max_seq_len.checked_sub(used) {
            Some(room) if room > 0 => Ok((room, question_tokens)),
            _ => Err(Error::InvalidInput(format!(
                "the question is {question_tokens} tokens, and with {specials} special tokens \
                 no context fits into max_seq_len {max_seq_len}: shorten the question or raise \
                 max_seq_len (at least {} here)",
                used + 1
            ))),
        }
    }

    /// Cuts (question, context) into windows of at most `max_seq_len` tokens, consecutive windows
    /// sharing `doc_stride` context tokens. Fails, before tokenizing the context, when the
    /// question leaves no more than `doc_stride` context tokens per window (no window could
    /// move past the previous one).
    pub fn windows(
        &self,
        question: &str,
        context: &str,
        max_seq_len: usize,
        doc_stride: usize,
    ) -> Result<Vec<Window>> {
        let (room, question_tokens) = self.context_room(question, max_seq_len)?;
        if doc_stride >= room {
            return Err(Error::InvalidInput(format!(
                "the question is {question_tokens} tokens, which leaves {room} context tokens per \
                 window of max_seq_len {max_seq_len}, and doc_stride {doc_stride} must be smaller \
                 than that: shorten the question, raise max_seq_len or lower doc_stride"
            )));
        }
        let tok = self.truncating(max_seq_len, doc_stride)?;
        // The checks above keep the tokenizer's own assertions from firing; should one fire
        // all the same, it is this request's error, not the process's end.
        let encoded =
            std::panic::catch_unwind(|| tok.encode_char_offsets((question, context), true))
                .map_err(|_| {
                    Error::Tokenizer(format!(
                    "the tokenizer failed on this input (max_seq_len {max_seq_len}, doc_stride \
                     {doc_stride})"
                ))
                })?;
        let mut encoding = encoded.map_err(|e| Error::Tokenizer(e.to_string()))?;
        let overflowing = encoding.take_overflowing();
        let mut windows = Vec::with_capacity(1 + overflowing.len());
        for enc in std::iter::once(encoding).chain(overflowing) {
            if enc.len() > max_seq_len {
                return Err(Error::Tokenizer(format!(
                    "a window of {} tokens came out longer than max_seq_len {max_seq_len}",
                    enc.len()
                )));
            }
            let p_mask = enc
                .get_sequence_ids()
                .iter()
                .zip(enc.get_ids())
                .map(|(seq, &id)| *seq != Some(1) && Some(id) != self.cls_token_id)
                .collect();
            windows.push(Window {
                encoding: enc,
                p_mask,
            });
        }
        Ok(windows)
    }
}
