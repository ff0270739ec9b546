//! A checkpoint's tokenizer as transformers loads it: tokenizer.json, or the tokenizer
//! transformers would build from vocab.txt (WordPiece), vocab.json + merges.txt (byte-level
//! BPE) or a SentencePiece model.

use std::collections::HashMap;
use std::sync::RwLock;

use tokenizers::Tokenizer;

use super::QaTokenizer;
use crate::checkpoint::{read_json, CheckpointFiles};
use crate::error::{Error, Result};
use crate::models::ModelSpec;

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
}

fn token_name(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v => v.get("content")?.as_str().map(str::to_string),
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
