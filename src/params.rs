//! The pipeline's per-question parameters, read as transformers' keyword arguments.

use crate::decode::DecodeParams;

/// Per-question parameters, as the transformers pipeline's keyword arguments. Read from a JSON
/// object of those names (`null` gives the defaults); unknown names and other JSON values are
/// refused.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"top_k": 3, "max_answer_len": 30}))]
pub struct QaParams {
    /// Number of answers (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub top_k: Option<usize>,
    /// Longest answer in tokens (default 15).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_answer_len: Option<usize>,
    /// Window length in tokens (default min(model max, 384)).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_seq_len: Option<usize>,
    /// Overlap of consecutive windows in tokens (default min(max_seq_len / 2, 128)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc_stride: Option<usize>,
    /// Accepted for compatibility; fast tokenizers ignore it in transformers too.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_question_len: Option<usize>,
    /// Offer the empty answer (SQuAD v2 models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle_impossible_answer: Option<bool>,
    /// Widen spans to whole words (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub align_to_words: Option<bool>,
}

/// [`QaParams`] as serde reads it from a map.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamsMap {
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    max_answer_len: Option<usize>,
    #[serde(default)]
    max_seq_len: Option<usize>,
    #[serde(default)]
    doc_stride: Option<usize>,
    #[serde(default)]
    max_question_len: Option<usize>,
    #[serde(default)]
    handle_impossible_answer: Option<bool>,
    #[serde(default)]
    align_to_words: Option<bool>,
}

impl<'de> serde::Deserialize<'de> for QaParams {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Params;
        impl<'de> serde::de::Visitor<'de> for Params {
            type Value = QaParams;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of the pipeline's parameters (top_k, max_answer_len, ...)")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<QaParams, E> {
                Ok(QaParams::default())
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<QaParams, E> {
                Ok(QaParams::default())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<QaParams, A::Error> {
                use serde::Deserialize;
                let m = ParamsMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(QaParams {
                    top_k: m.top_k,
                    max_answer_len: m.max_answer_len,
                    max_seq_len: m.max_seq_len,
                    doc_stride: m.doc_stride,
                    max_question_len: m.max_question_len,
                    handle_impossible_answer: m.handle_impossible_answer,
                    align_to_words: m.align_to_words,
                })
            }
        }
        // Any: a plain `deserialize_map` would still let formats hand a sequence to it.
        deserializer.deserialize_any(Params)
    }
}

impl QaParams {
    /// The decoding part of these parameters, defaults filled in.
    pub fn decode_params(&self) -> DecodeParams {
        let d = DecodeParams::default();
        DecodeParams {
            top_k: self.top_k.unwrap_or(d.top_k),
            max_answer_len: self.max_answer_len.unwrap_or(d.max_answer_len),
            handle_impossible_answer: self
                .handle_impossible_answer
                .unwrap_or(d.handle_impossible_answer),
            align_to_words: self.align_to_words.unwrap_or(d.align_to_words),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(value: serde_json::Value) -> Result<QaParams, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn null_and_an_empty_object_give_the_defaults() {
        assert_eq!(read(json!(null)).unwrap(), QaParams::default());
        assert_eq!(read(json!({})).unwrap(), QaParams::default());
    }

    #[test]
    fn names_are_the_pipeline_keyword_arguments() {
        let p = read(json!({"top_k": 3, "max_answer_len": 30, "max_seq_len": 256,
            "doc_stride": 64, "max_question_len": 64, "handle_impossible_answer": true,
            "align_to_words": false}))
        .unwrap();
        assert_eq!(p.top_k, Some(3));
        assert_eq!(p.max_seq_len, Some(256));
        assert_eq!(p.doc_stride, Some(64));
        let d = p.decode_params();
        assert_eq!((d.top_k, d.max_answer_len), (3, 30));
        assert!(d.handle_impossible_answer && !d.align_to_words);
    }

    #[test]
    fn unknown_names_and_other_values_are_refused() {
        let e = read(json!({"topk": 3})).unwrap_err();
        assert!(e.contains("unknown field `topk`"), "{e}");
        for v in [json!([1, 2]), json!(3), json!("top_k")] {
            let e = read(v.clone()).unwrap_err();
            assert!(
                e.contains("an object of the pipeline's parameters"),
                "{v}: {e}"
            );
        }
        assert!(read(json!({"top_k": -1})).is_err());
    }

    #[test]
    fn decode_defaults_fill_what_is_left_out() {
        let d = QaParams::default().decode_params();
        assert_eq!(d, DecodeParams::default());
        assert_eq!((d.top_k, d.max_answer_len), (1, 15));
    }
}
