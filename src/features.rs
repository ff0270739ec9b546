//! Question + context → model windows ("features"), exactly as the transformers
//! question-answering pipeline builds them with a fast tokenizer: question first, truncation
//! `only_second`, overflowing windows that overlap by `doc_stride` tokens, and a `p_mask` that
//! leaves only context tokens (and the CLS token) as possible answers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokenizers::{
    Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::checkpoint::{read_json, CheckpointFiles};
use crate::error::{Error, Result};
use crate::models::ModelSpec;

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

fn token_name(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v => v.get("content")?.as_str().map(str::to_string),
    }
}

impl QaTokenizer {
    /// Loads tokenizer.json, or when there is none builds the tokenizer transformers would:
    /// BERT WordPiece from vocab.txt (lower-casing as tokenizer_config.json says), byte-level
    /// BPE from vocab.json + merges.txt, or a converted SentencePiece model (as the
    /// architecture of `spec` converts it).
    pub fn from_checkpoint(files: &CheckpointFiles, spec: &ModelSpec) -> Result<Self> {
        let tok_config = match &files.tokenizer_config {
            Some(p) => read_json(p)?,
            None => serde_json::Value::Null,
        };
        let special_map = json_beside_config(files, "special_tokens_map.json")?;
        let mut base = if let Some(path) = &files.tokenizer_json {
            Tokenizer::from_file(path).map_err(|e| Error::Checkpoint {
                path: path.clone(),
                message: format!("cannot load tokenizer: {e}"),
            })?
        } else if let Some(vocab) = &files.vocab_txt {
            wordpiece_from_vocab(vocab, &tok_config)?
        } else if let Some((vocab, merges)) = &files.bpe_files {
            byte_level_bpe_from_files(vocab, merges, &tok_config)?
        } else if let Some(model) = &files.spm_model {
            sentencepiece_from_model(files, spec, model, &tok_config, &special_map)?
        } else {
            return Err(Error::ModelNotFound {
                model: files.name.clone(),
                message: "no tokenizer.json, vocab.txt, vocab.json + merges.txt \
                          nor SentencePiece .model"
                    .into(),
            });
        };
        base.with_padding(None);
        base.with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let lookup = |key: &str, fallback: &str| {
            let name = token_name(&tok_config, key)
                .or_else(|| token_name(&special_map, key))
                .unwrap_or_else(|| fallback.to_string());
            base.token_to_id(&name)
        };
        let cls_token_id = lookup("cls_token", "[CLS]");
        let pad_token_id = lookup("pad_token", "[PAD]").unwrap_or(0);
        let model_max_length = tok_config
            .get("model_max_length")
            .and_then(|v| v.as_f64())
            .filter(|&v| v > 0.0 && v < 1e12)
            .map(|v| v as usize);
        Ok(Self {
            base,
            truncating: RwLock::new(HashMap::new()),
            cls_token_id,
            pad_token_id,
            model_max_length,
        })
    }

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

/// An optional JSON file of the checkpoint, next to config.json; `Null` when absent.
fn json_beside_config(files: &CheckpointFiles, name: &str) -> Result<serde_json::Value> {
    files
        .config
        .parent()
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
        .map(|p| read_json(&p))
        .transpose()
        .map(|v| v.unwrap_or(serde_json::Value::Null))
}

/// The tokenizer transformers converts from a SentencePiece model; the architecture and the
/// token files beside the model say how.
fn sentencepiece_from_model(
    files: &CheckpointFiles,
    spec: &ModelSpec,
    model: &std::path::Path,
    tok_config: &serde_json::Value,
    special_map: &serde_json::Value,
) -> Result<Tokenizer> {
    let added_tokens = json_beside_config(files, "added_tokens.json")?;
    crate::sentencepiece::tokenizer_from_model_file(
        model,
        &crate::sentencepiece::ConversionInputs {
            tokenizer_config: tok_config,
            special_tokens_map: special_map,
            added_tokens: &added_tokens,
            model_type: Some(spec.model_type()),
            model_default: spec.architecture().sentencepiece,
        },
    )
}

fn wordpiece_from_vocab(vocab: &std::path::Path, config: &serde_json::Value) -> Result<Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let bad = |e: &dyn std::fmt::Display| Error::Checkpoint {
        path: vocab.into(),
        message: format!("cannot build a WordPiece tokenizer: {e}"),
    };
    let vocab_str = vocab.to_str().ok_or_else(|| bad(&"path is not UTF-8"))?;
    let wordpiece = WordPiece::from_file(vocab_str)
        .unk_token(token_name(config, "unk_token").unwrap_or_else(|| "[UNK]".into()))
        .build()
        .map_err(|e| bad(&e))?;
    let lower = config
        .get("do_lower_case")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let strip_accents = config.get("strip_accents").and_then(|v| v.as_bool());
    let chinese = config
        .get("tokenize_chinese_chars")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let mut tokenizer = Tokenizer::new(wordpiece);
    tokenizer.with_normalizer(Some(BertNormalizer::new(
        true,
        chinese,
        strip_accents,
        lower,
    )));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    let sep = token_name(config, "sep_token").unwrap_or_else(|| "[SEP]".into());
    let cls = token_name(config, "cls_token").unwrap_or_else(|| "[CLS]".into());
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| bad(&format!("special token {t} is not in the vocabulary")))
    };
    let (sep_id, cls_id) = (id(&sep)?, id(&cls)?);
    tokenizer.with_post_processor(Some(BertProcessing::new((sep, sep_id), (cls, cls_id))));
    Ok(tokenizer)
}

/// A RoBERTa-style byte-level BPE tokenizer from vocab.json + merges.txt, set up as
/// transformers' converter does (`RobertaConverter`): byte-level pre-tokenizer, `<s> A </s></s> B
/// </s>` pairs, offsets trimmed of the leading space.
fn byte_level_bpe_from_files(
    vocab: &std::path::Path,
    merges: &std::path::Path,
    config: &serde_json::Value,
) -> Result<Tokenizer> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::processors::roberta::RobertaProcessing;
    use tokenizers::AddedToken;
    let bad = |e: &dyn std::fmt::Display| Error::Checkpoint {
        path: vocab.into(),
        message: format!("cannot build a byte-level BPE tokenizer: {e}"),
    };
    let path_str = |p: &std::path::Path| {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| bad(&"path is not UTF-8"))
    };
    let bpe = BPE::from_file(&path_str(vocab)?, &path_str(merges)?)
        .build()
        .map_err(|e| bad(&e))?;
    let flag =
        |key: &str, default: bool| config.get(key).and_then(|v| v.as_bool()).unwrap_or(default);
    let add_prefix_space = flag("add_prefix_space", false);
    let trim_offsets = flag("trim_offsets", true);
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(
        ByteLevel::default()
            .add_prefix_space(add_prefix_space)
            .trim_offsets(trim_offsets),
    ));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let name = |key: &str, default: &str| token_name(config, key).unwrap_or_else(|| default.into());
    let (cls, sep) = (name("cls_token", "<s>"), name("sep_token", "</s>"));
    let specials: Vec<AddedToken> = [
        cls.clone(),
        name("pad_token", "<pad>"),
        sep.clone(),
        name("unk_token", "<unk>"),
        name("mask_token", "<mask>"),
    ]
    .into_iter()
    .map(|t| AddedToken::from(t, true))
    .collect();
    tokenizer.add_special_tokens(&specials);
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| bad(&format!("special token {t} is not in the vocabulary")))
    };
    let (sep_id, cls_id) = (id(&sep)?, id(&cls)?);
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new((sep, sep_id), (cls, cls_id))
            .trim_offsets(trim_offsets)
            .add_prefix_space(add_prefix_space),
    ));
    Ok(tokenizer)
}
