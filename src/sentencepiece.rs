//! Tokenizers for checkpoints that ship only a SentencePiece model (`spiece.model`,
//! `sentencepiece.bpe.model`, `spm.model`) and no tokenizer.json.
//!
//! transformers converts such a "slow" tokenizer into a fast one with `convert_slow_tokenizer.py`
//! (`AlbertConverter`, `XLMRobertaConverter`, `DebertaV2Converter`), then adds the tokens that
//! tokenizer_config.json, added_tokens.json and special_tokens_map.json declare. This module builds
//! the same `tokenizers::Tokenizer` from the same files, so ids, offsets and answers match.

use std::path::Path;

use serde_json::Value;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{
    Lowercase, Precompiled, Replace, Sequence as NormalizerSequence, Strip, StripAccents, NFKD,
};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::error::{Error, Result};

/// File names under which Hub checkpoints store their SentencePiece model, in lookup order
/// (ALBERT/T5-style, XLM-RoBERTa/fairseq-style, DeBERTa-v2/v3).
pub const MODEL_FILE_NAMES: [&str; 3] = ["spiece.model", "sentencepiece.bpe.model", "spm.model"];

/// The word-boundary marker SentencePiece puts in front of every word.
const SPACE_MARKER: char = '▁';

// The .model file is a `sentencepiece.ModelProto` (sentencepiece_model.proto). Only the fields
// the conversion reads are declared; prost skips the others. Declaring the messages with prost's
// derive needs neither protoc nor a build script.

/// A SentencePiece model file (`sentencepiece.ModelProto`), reduced to what conversion needs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// The vocabulary, in id order.
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<SentencePiece>,
    /// How the model was trained (algorithm, special ids).
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    /// How text is normalized before segmentation.
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
}

/// One vocabulary entry (`ModelProto.SentencePiece`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SentencePiece {
    /// The piece's text (words start with `▁`).
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    /// Its log probability (unigram) or merge priority (BPE).
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    /// [`PieceType`] as its protobuf number; NORMAL when absent.
    #[prost(int32, optional, tag = "3", default = "1")]
    pub r#type: Option<i32>,
}

/// The kinds of vocabulary entries (`SentencePiece.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary piece.
    Normal = 1,
    /// The unknown piece.
    Unknown = 2,
    /// A control symbol (`<s>`, `</s>`...), never produced from text.
    Control = 3,
    /// A user-defined symbol, always kept whole.
    UserDefined = 4,
    /// An unused piece.
    Unused = 5,
    /// A byte-fallback piece (`<0x41>`).
    Byte = 6,
}

/// Training settings (`TrainerSpec`), the fields the conversion reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrainerSpec {
    /// Segmentation algorithm: 1 unigram, 2 BPE, 3 word, 4 char.
    #[prost(int32, optional, tag = "3", default = "1")]
    pub model_type: Option<i32>,
    /// Whether unknown characters fall back to byte pieces.
    #[prost(bool, optional, tag = "35", default = "false")]
    pub byte_fallback: Option<bool>,
    /// Id of the unknown piece.
    #[prost(int32, optional, tag = "40", default = "0")]
    pub unk_id: Option<i32>,
    /// Id of the beginning-of-sentence piece (-1: none).
    #[prost(int32, optional, tag = "41", default = "1")]
    pub bos_id: Option<i32>,
    /// Id of the end-of-sentence piece (-1: none).
    #[prost(int32, optional, tag = "42", default = "2")]
    pub eos_id: Option<i32>,
    /// Id of the padding piece (-1: none).
    #[prost(int32, optional, tag = "43", default = "-1")]
    pub pad_id: Option<i32>,
}

/// Normalization settings (`NormalizerSpec`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NormalizerSpec {
    /// Rule name (`nmt_nfkc`, `identity`...).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// The compiled normalization rules (a double-array trie plus replacement strings).
    #[prost(bytes = "vec", optional, tag = "2")]
    pub precompiled_charsmap: Option<Vec<u8>>,
    /// Whether a `▁` is put in front of the text.
    #[prost(bool, optional, tag = "3", default = "true")]
    pub add_dummy_prefix: Option<bool>,
    /// Whether leading, trailing and repeated spaces are removed.
    #[prost(bool, optional, tag = "4", default = "true")]
    pub remove_extra_whitespaces: Option<bool>,
}

impl ModelProto {
    /// Reads and decodes a `.model` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        use prost::Message;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode(bytes.as_slice()).map_err(|e| Error::Checkpoint {
            path: path.into(),
            message: format!(
                "not a SentencePiece model ({e}); the file may be truncated or corrupt: \
                 download it again"
            ),
        })
    }

    fn charsmap(&self) -> &[u8] {
        self.normalizer_spec
            .as_ref()
            .map(|n| n.precompiled_charsmap())
            .unwrap_or_default()
    }
}

impl SentencePiece {
    fn kind(&self) -> Option<PieceType> {
        Some(match self.r#type() {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

/// Which transformers converter a checkpoint's SentencePiece model goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Converter {
    /// `AlbertConverter`: `[CLS] A [SEP] B [SEP]`, accent stripping and lower-casing.
    Albert,
    /// `XLMRobertaConverter`: fairseq ids (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3), `<s> A </s></s> B </s>`.
    XlmRoberta,
    /// `DebertaV2Converter`: `[CLS] A [SEP] B [SEP]`, optional punctuation splitting.
    DebertaV2,
}

impl Converter {
    /// The converter for a checkpoint, from tokenizer_config.json's `tokenizer_class` (what
    /// `AutoTokenizer` goes by) or, when it names none, the architecture's own (`model_default`,
    /// from the registry). `None` when the tokenizer is of another kind.
    pub fn detect(tokenizer_class: Option<&str>, model_default: Option<Self>) -> Option<Self> {
        match tokenizer_class {
            Some(class) => {
                let slow = class.trim_end_matches("Fast");
                Self::ALL.into_iter().find(|c| c.tokenizer_class() == slow)
            }
            None => model_default,
        }
    }

    /// Every converter.
    pub const ALL: [Self; 3] = [Self::Albert, Self::XlmRoberta, Self::DebertaV2];

    /// The (slow) transformers tokenizer class it converts.
    pub fn tokenizer_class(self) -> &'static str {
        match self {
            Self::Albert => "AlbertTokenizer",
            Self::XlmRoberta => "XLMRobertaTokenizer",
            Self::DebertaV2 => "DebertaV2Tokenizer",
        }
    }

    /// The special tokens of the tokenizer class when tokenizer_config.json does not name them,
    /// as (attribute, content).
    fn default_special_tokens(self) -> [(&'static str, &'static str); 7] {
        let (cls, sep, unk, pad, mask) = match self {
            Self::Albert => ("[CLS]", "[SEP]", "<unk>", "<pad>", "[MASK]"),
            Self::XlmRoberta => ("<s>", "</s>", "<unk>", "<pad>", "<mask>"),
            Self::DebertaV2 => ("[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]"),
        };
        [
            ("bos_token", cls),
            ("eos_token", sep),
            ("unk_token", unk),
            ("sep_token", sep),
            ("pad_token", pad),
            ("cls_token", cls),
            ("mask_token", mask),
        ]
    }

    /// The (cls, sep) token texts of the converter's post-processor template.
    fn template_tokens(self) -> (&'static str, &'static str) {
        match self {
            Self::Albert | Self::DebertaV2 => ("[CLS]", "[SEP]"),
            Self::XlmRoberta => ("<s>", "</s>"),
        }
    }
}

/// What the conversion reads besides the model file.
pub struct ConversionInputs<'a> {
    /// tokenizer_config.json (`Value::Null` when absent).
    pub tokenizer_config: &'a Value,
    /// special_tokens_map.json (`Value::Null` when absent).
    pub special_tokens_map: &'a Value,
    /// added_tokens.json (`Value::Null` when absent): token → id, from older checkpoints.
    pub added_tokens: &'a Value,
    /// config.json's `model_type` (for messages).
    pub model_type: Option<&'a str>,
    /// The converter of the checkpoint's architecture, used when tokenizer_config.json names no
    /// tokenizer class.
    pub model_default: Option<Converter>,
}

/// Builds the fast tokenizer transformers would convert from the SentencePiece model at
/// `model_file`.
pub fn tokenizer_from_model_file(
    model_file: &Path,
    inputs: &ConversionInputs,
) -> Result<Tokenizer> {
    let bad = |message: String| Error::Checkpoint {
        path: model_file.into(),
        message,
    };
    let config = inputs.tokenizer_config;
    let converter = converter_for(inputs, &bad)?;
    let proto = ModelProto::from_file(model_file)?;
    let trainer = proto.trainer_spec.clone().unwrap_or_default();
    require_unigram(&trainer, &bad)?;

    let (vocab, unk_id) = vocabulary(&proto, converter, &trainer);
    let unigram = Unigram::from(vocab, Some(unk_id), false)
        .map_err(|e| bad(format!("cannot build the unigram model: {e}")))?;
    let mut tokenizer = Tokenizer::new(unigram);

    // The converter adds control and user-defined pieces as tokens that are never split,
    // before it sets the normalizer.
    let spm_tokens = model_tokens(&proto);
    tokenizer.add_tokens(&spm_tokens);

    let precompiled = precompiled_normalizer(proto.charsmap(), &bad)?;
    tokenizer.with_normalizer(Some(normalizer(converter, config, precompiled)?));

    // None of these three tokenizer classes has `add_prefix_space` or `legacy`, so the
    // converter always prepends the marker ("always").
    let metaspace = Metaspace::new(SPACE_MARKER, PrependScheme::Always, true);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(converter, config, &metaspace)));
    tokenizer.with_decoder(Some(metaspace));

    // Tokens from tokenizer_config.json / added_tokens.json come after the normalizer, which
    // the normalized ones among them are matched through.
    let declared = declared_tokens(converter, inputs, &spm_tokens);
    tokenizer.add_tokens(&declared);

    let template = post_processor(&tokenizer, converter, &bad)?;
    tokenizer.with_post_processor(Some(template));
    Ok(tokenizer)
}

/// The converter named by tokenizer_config.json's `tokenizer_class` or, without one, the
/// architecture's; an error (through `bad`) for any other tokenizer.
fn converter_for(inputs: &ConversionInputs, bad: &dyn Fn(String) -> Error) -> Result<Converter> {
    let tokenizer_class = inputs
        .tokenizer_config
        .get("tokenizer_class")
        .and_then(Value::as_str);
    Converter::detect(tokenizer_class, inputs.model_default).ok_or_else(|| {
        bad(format!(
            "no tokenizer.json, and a SentencePiece tokenizer for {} is not supported (only {} \
             convert); save a tokenizer.json with transformers \
             (AutoTokenizer.from_pretrained(...).save_pretrained(...)) next to the model",
            match (tokenizer_class, inputs.model_type) {
                (Some(class), _) => format!("tokenizer_class `{class}`"),
                (None, Some(model_type)) => format!("model_type `{model_type}`"),
                (None, None) => "an unknown model type".to_string(),
            },
            Converter::ALL.map(Converter::tokenizer_class).join(", ")
        ))
    })
}

/// Only unigram models convert (as transformers' converters require); others are an error
/// (through `bad`) naming their algorithm.
fn require_unigram(trainer: &TrainerSpec, bad: &dyn Fn(String) -> Error) -> Result<()> {
    if trainer.model_type() != 1 {
        let algorithm = match trainer.model_type() {
            2 => "BPE",
            3 => "word",
            4 => "char",
            _ => "unknown",
        };
        return Err(bad(format!(
            "the SentencePiece model uses the {algorithm} algorithm; only unigram models can be \
             loaded without tokenizer.json: save a tokenizer.json with transformers \
             (AutoTokenizer.from_pretrained(...).save_pretrained(...)) next to the model"
        )));
    }
    Ok(())
}

/// A boolean option of tokenizer_config.json, `default` when absent or not a boolean.
fn config_flag(config: &Value, key: &str, default: bool) -> bool {
    config.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// The model's control pieces (as special tokens) and user-defined pieces (as plain ones), in
/// id order, neither of them normalized.
fn model_tokens(proto: &ModelProto) -> Vec<AddedToken> {
    proto
        .pieces
        .iter()
        .filter_map(|p| {
            let special = match p.kind()? {
                PieceType::Control => true,
                PieceType::UserDefined => false,
                _ => return None,
            };
            Some(AddedToken::from(p.piece(), special).normalized(false))
        })
        .collect()
}

/// The model's compiled normalization rules, `None` when it has none; malformed rules are an
/// error (through `bad`).
fn precompiled_normalizer(
    charsmap: &[u8],
    bad: &dyn Fn(String) -> Error,
) -> Result<Option<Precompiled>> {
    if charsmap.is_empty() {
        return Ok(None);
    }
    let precompiled = Precompiled::from(charsmap).map_err(|e| {
        bad(format!(
            "malformed precompiled_charsmap in the normalizer spec ({e}); download the file again"
        ))
    })?;
    Ok(Some(precompiled))
}

/// The converter's normalizer: its own steps around the model's `precompiled` rules, with the
/// options of tokenizer_config.json (`config`).
fn normalizer(
    converter: Converter,
    config: &Value,
    precompiled: Option<Precompiled>,
) -> Result<NormalizerSequence> {
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    match converter {
        Converter::Albert => {
            for quotes in ["``", "''"] {
                normalizers.push(
                    Replace::new(quotes, "\"")
                        .map_err(|e| Error::Tokenizer(e.to_string()))?
                        .into(),
                );
            }
            if !config_flag(config, "keep_accents", false) {
                normalizers.push(NFKD.into());
                normalizers.push(StripAccents.into());
            }
            if config_flag(config, "do_lower_case", true) {
                normalizers.push(Lowercase.into());
            }
            normalizers.extend(precompiled.map(NormalizerWrapper::from));
            normalizers.push(collapse_spaces(" ")?);
        }
        Converter::XlmRoberta => {
            normalizers.extend(precompiled.map(NormalizerWrapper::from));
            normalizers.push(Strip::new(false, true).into());
            normalizers.push(collapse_spaces(&SPACE_MARKER.to_string())?);
        }
        Converter::DebertaV2 => {
            if config_flag(config, "do_lower_case", false) {
                normalizers.push(Lowercase.into());
            }
            normalizers.push(Strip::new(true, true).into());
            normalizers.extend(precompiled.map(NormalizerWrapper::from));
            normalizers.push(collapse_spaces(" ")?);
        }
    }
    Ok(NormalizerSequence::new(normalizers))
}

/// A normalizer that replaces every run of two or more spaces with `to`.
fn collapse_spaces(to: &str) -> Result<NormalizerWrapper> {
    Ok(Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()),
        to,
    )
    .map_err(|e| Error::Tokenizer(e.to_string()))?
    .into())
}

/// The converter's pre-tokenizer: `metaspace`, after punctuation splitting for DeBERTa-v2 when
/// tokenizer_config.json (`config`) asks for it.
fn pre_tokenizer(
    converter: Converter,
    config: &Value,
    metaspace: &Metaspace,
) -> PreTokenizerWrapper {
    if converter == Converter::DebertaV2 {
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        if config_flag(config, "split_by_punct", false) {
            steps.push(Punctuation::new(SplitDelimiterBehavior::Isolated).into());
        }
        steps.push(metaspace.clone().into());
        PreTokenizerSequence::new(steps).into()
    } else {
        metaspace.clone().into()
    }
}

/// The converter's post-processor template, with the ids its special tokens have in
/// `tokenizer`; a missing one is an error (through `bad`).
fn post_processor(
    tokenizer: &Tokenizer,
    converter: Converter,
    bad: &dyn Fn(String) -> Error,
) -> Result<TemplateProcessing> {
    let (cls, sep) = converter.template_tokens();
    let (cls_id, sep_id) = (
        template_token_id(tokenizer, cls, bad)?,
        template_token_id(tokenizer, sep, bad)?,
    );
    let (single, pair) = match converter {
        Converter::XlmRoberta => (
            format!("{cls} $A {sep}"),
            format!("{cls} $A {sep} {sep} $B {sep}"),
        ),
        Converter::Albert | Converter::DebertaV2 => (
            format!("{cls}:0 $A:0 {sep}:0"),
            format!("{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1"),
        ),
    };
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .special_tokens(vec![(cls, cls_id), (sep, sep_id)])
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))
}

/// The unigram vocabulary (piece, score) and unknown id the converter uses.
fn vocabulary(
    proto: &ModelProto,
    converter: Converter,
    trainer: &TrainerSpec,
) -> (Vec<(String, f64)>, usize) {
    let pieces = proto
        .pieces
        .iter()
        .map(|p| (p.piece().to_string(), f64::from(p.score())));
    match converter {
        // ALBERT pushes pieces such as "1," down so that numbers keep their comma apart.
        Converter::Albert => (
            pieces
                .map(|(piece, score)| {
                    if digit_then_comma(&piece) {
                        (piece, score - 100.0)
                    } else {
                        (piece, score)
                    }
                })
                .collect(),
            trainer.unk_id().max(0) as usize,
        ),
        // fairseq's dictionary: four fixed specials, the model's pieces from id 3 on (shifted
        // by one), and `<mask>` last.
        Converter::XlmRoberta => {
            let mut vocab: Vec<(String, f64)> = ["<s>", "<pad>", "</s>", "<unk>"]
                .into_iter()
                .map(|t| (t.to_string(), 0.0))
                .collect();
            vocab.extend(pieces.skip(3));
            vocab.push(("<mask>".to_string(), 0.0));
            (vocab, 3)
        }
        Converter::DebertaV2 => (pieces.collect(), trainer.unk_id().max(0) as usize),
    }
}

/// transformers' `check_number_comma` negated: a piece of 2+ characters ending in a digit and
/// a comma. (Python's `isdigit` is approximated by `char::is_numeric`; they differ only for
/// rare numerals such as "½" or "Ⅻ".)
fn digit_then_comma(piece: &str) -> bool {
    let mut rev = piece.chars().rev();
    matches!((rev.next(), rev.next()), (Some(','), Some(d)) if d.is_numeric())
}

fn template_token_id(
    tokenizer: &Tokenizer,
    text: &str,
    bad: &dyn Fn(String) -> Error,
) -> Result<u32> {
    tokenizer.token_to_id(text).ok_or_else(|| {
        bad(format!(
            "special token {text} is neither in the SentencePiece model nor in \
             tokenizer_config.json / added_tokens.json; save a tokenizer.json with transformers \
             next to the model"
        ))
    })
}

/// An `AddedToken` from its tokenizer_config.json / special_tokens_map.json form: a plain string
/// or `{content, lstrip, rstrip, single_word, normalized, special}`. Missing flags take
/// Python's `AddedToken` defaults (`normalized` = not special).
fn added_token(value: &Value, special: bool) -> Option<AddedToken> {
    if let Some(content) = value.as_str() {
        return Some(AddedToken::from(content, special));
    }
    let content = value.get("content")?.as_str()?;
    let flag = |key: &str| value.get(key).and_then(Value::as_bool);
    let special = flag("special").unwrap_or(special);
    Some(
        AddedToken::from(content, special)
            .single_word(flag("single_word").unwrap_or(false))
            .lstrip(flag("lstrip").unwrap_or(false))
            .rstrip(flag("rstrip").unwrap_or(false))
            .normalized(flag("normalized").unwrap_or(!special)),
    )
}

/// The tokens transformers adds after conversion, in its order: tokenizer_config.json's
/// `added_tokens_decoder` (or, in older checkpoints, added_tokens.json), then the special tokens
/// (`cls_token`, `mask_token`...) not among them.
fn declared_tokens(
    converter: Converter,
    inputs: &ConversionInputs,
    spm_tokens: &[AddedToken],
) -> Vec<AddedToken> {
    let decoder = inputs
        .tokenizer_config
        .get("added_tokens_decoder")
        .and_then(Value::as_object);
    let specials = special_tokens(converter, inputs, decoder.is_some());
    let special_texts: Vec<String> = specials
        .iter()
        .filter_map(|(_, v)| special_text(v))
        .collect();
    let known = tokens_with_ids(decoder, inputs.added_tokens, &special_texts);

    // Tokens identical to ones the converter added are skipped; the rest are marked special
    // when they are one of the special tokens.
    let mut tokens: Vec<AddedToken> = known
        .into_iter()
        .map(|(_, t)| t)
        .filter(|t| !spm_tokens.contains(t))
        .map(|mut t| {
            t.special = t.special || special_texts.contains(&t.content);
            t
        })
        .collect();
    let mut seen: Vec<String> = spm_tokens
        .iter()
        .chain(&tokens)
        .map(|t| t.content.clone())
        .collect();
    for (attr, value) in &specials {
        let Some(text) = special_text(value) else {
            continue;
        };
        if seen.contains(&text) {
            continue;
        }
        let Some(token) = special_token(converter, attr, value, &text) else {
            continue;
        };
        seen.push(text);
        tokens.push(token);
    }
    tokens
}

/// Special tokens as the tokenizer is initialised with them, as (attribute, value), attributes
/// in the class's order and then `additional_special_tokens`: from tokenizer_config.json, and
/// for older checkpoints (without `added_tokens_decoder`, `has_decoder` false) from
/// special_tokens_map.json on top, else the class defaults.
fn special_tokens(
    converter: Converter,
    inputs: &ConversionInputs,
    has_decoder: bool,
) -> Vec<(String, Value)> {
    let config = inputs.tokenizer_config;
    let mut specials: Vec<(String, Value)> = Vec::new();
    for (attr, default) in converter.default_special_tokens() {
        let from_map = inputs.special_tokens_map.get(attr).filter(|v| !v.is_null());
        let from_config = config.get(attr).filter(|v| !v.is_null());
        let value = if has_decoder {
            from_config
        } else {
            from_map.or(from_config)
        };
        specials.push((
            attr.to_string(),
            value.cloned().unwrap_or_else(|| Value::from(default)),
        ));
    }
    let sources = if has_decoder {
        vec![config]
    } else {
        vec![inputs.special_tokens_map, config]
    };
    for source in sources {
        if let Some(list) = source
            .get("additional_special_tokens")
            .and_then(Value::as_array)
        {
            for v in list {
                specials.push(("additional_special_tokens".to_string(), v.clone()));
            }
            break;
        }
    }
    specials
}

/// The text of a special token's value: a plain string or the `content` of an object.
fn special_text(value: &Value) -> Option<String> {
    value
        .as_str()
        .or_else(|| value.get("content").and_then(Value::as_str))
        .map(str::to_string)
}

/// Tokens with known ids, by increasing id: tokenizer_config.json's `added_tokens_decoder`, or
/// else the legacy added_tokens.json (`added_tokens`), whose tokens are special when their text
/// is in `special_texts`.
fn tokens_with_ids(
    decoder: Option<&serde_json::Map<String, Value>>,
    added_tokens: &Value,
    special_texts: &[String],
) -> Vec<(u64, AddedToken)> {
    let mut known: Vec<(u64, AddedToken)> = match decoder {
        Some(map) => map
            .iter()
            .filter_map(|(id, v)| Some((id.parse().ok()?, added_token(v, false)?)))
            .collect(),
        None => added_tokens
            .as_object()
            .map(|map| {
                map.iter()
                    .filter_map(|(text, id)| {
                        let special = special_texts.iter().any(|s| s == text);
                        Some((id.as_u64()?, AddedToken::from(text.as_str(), special)))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    known.sort_by_key(|(id, _)| *id);
    known
}

/// The token for special-token attribute `attr` with value `value` (whose text is `text`);
/// `None` when the value is neither a string nor a token object.
fn special_token(
    converter: Converter,
    attr: &str,
    value: &Value,
    text: &str,
) -> Option<AddedToken> {
    if value.is_string() && attr == "mask_token" {
        // The fast ALBERT and XLM-R classes make a plain-string mask token absorb the
        // space before it; XLM-R's stays normalized.
        Some(match converter {
            Converter::Albert => AddedToken::from(text, true).lstrip(true).normalized(false),
            Converter::XlmRoberta => AddedToken::from(text, true).lstrip(true).normalized(true),
            Converter::DebertaV2 => AddedToken::from(text, true),
        })
    } else {
        let mut token = added_token(value, true)?;
        token.special = true;
        Some(token)
    }
}
