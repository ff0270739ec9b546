//! Training data: SQuAD questions ([`crate::squad`]) → labelled windows ("features"), as
//! run_qa.py's `prepare_train_features` builds them, and padded batches of those features.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::features::QaTokenizer;
use crate::models::ModelInput;
use crate::squad::{SquadAnswer, SquadExample};

/// One training window with its labels, padded to `max_seq_len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainFeature {
    /// Token ids (padded).
    pub input_ids: Vec<u32>,
    /// Segment ids (padded with 0).
    pub token_type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Token index of the answer's first token (0, the CLS token, when the window lacks it).
    pub start_position: u32,
    /// Token index of the answer's last token (0 when the window lacks it).
    pub end_position: u32,
}

/// Features of a data set plus what was left out.
#[derive(Clone, Debug, Default)]
pub struct TrainFeatures {
    /// Every window of every kept question, in file order.
    pub features: Vec<TrainFeature>,
    /// Questions turned into features.
    pub questions: usize,
    /// Questions skipped because `answer_start` does not point at the answer text.
    pub skipped_misaligned: usize,
}

/// True when `answer.text` is found at `answer.answer_start` (characters) in `context`.
pub fn answer_matches(context: &str, answer: &SquadAnswer) -> bool {
    let n = answer.text.chars().count();
    context
        .chars()
        .skip(answer.answer_start)
        .take(n)
        .eq(answer.text.chars())
        && context.chars().count() >= answer.answer_start + n
}

/// Windows and labels of every question, as run_qa.py's `prepare_train_features`: the question
/// with leading whitespace removed, `only_second` truncation with `doc_stride` overlap, padding
/// to `max_seq_len`, and the first answer's token span (or the CLS index 0 when the window does
/// not hold all of it, or the question has no answer).
pub fn build_features(
    tokenizer: &QaTokenizer,
    questions: &[SquadExample],
    max_seq_len: usize,
    doc_stride: usize,
) -> Result<TrainFeatures> {
    let mut out = TrainFeatures::default();
    for q in questions {
        if let Some(answer) = q.answers.first() {
            if !answer_matches(&q.context, answer) {
                tracing::warn!(
                    "skipping question {:?} ({:?}): answer_start {} does not point at {:?}",
                    q.id,
                    q.title,
                    answer.answer_start,
                    answer.text
                );
                out.skipped_misaligned += 1;
                continue;
            }
        }
        let windows = tokenizer
            .windows(q.question.trim_start(), &q.context, max_seq_len, doc_stride)
            .map_err(|e| Error::Data {
                location: format!("question {:?} ({:?})", q.id, q.title),
                message: e.to_string(),
            })?;
        for w in &windows {
            let n = w.len();
            let mut input_ids = w.input_ids().to_vec();
            let mut token_type_ids = w.token_type_ids().to_vec();
            let mut attention_mask = vec![1u32; n];
            let mut offsets = w.offsets().to_vec();
            let pad = max_seq_len.saturating_sub(n);
            input_ids.extend(std::iter::repeat_n(tokenizer.pad_token_id(), pad));
            token_type_ids.extend(std::iter::repeat_n(0, pad));
            attention_mask.extend(std::iter::repeat_n(0, pad));
            offsets.extend(std::iter::repeat_n((0, 0), pad));
            let (start_position, end_position) = match q.answers.first() {
                None => (0, 0),
                Some(answer) => label_span(
                    &offsets,
                    w.encoding.get_sequence_ids().as_slice(),
                    answer.answer_start,
                    answer.answer_start + answer.text.chars().count(),
                ),
            };
            out.features.push(TrainFeature {
                input_ids,
                token_type_ids,
                attention_mask,
                start_position,
                end_position,
            });
        }
        out.questions += 1;
    }
    Ok(out)
}

/// run_qa.py's labelling of one window: `offsets` padded to the full length (padding `(0, 0)`),
/// `sequence_ids` of the real tokens, answer `[start_char, end_char)`.
fn label_span(
    offsets: &[(usize, usize)],
    sequence_ids: &[Option<usize>],
    start_char: usize,
    end_char: usize,
) -> (u32, u32) {
    let Some(first) = sequence_ids.iter().position(|s| *s == Some(1)) else {
        return (0, 0);
    };
    let Some(last) = sequence_ids.iter().rposition(|s| *s == Some(1)) else {
        return (0, 0);
    };
    if !(offsets[first].0 <= start_char && offsets[last].1 >= end_char) {
        return (0, 0);
    }
    // The walks are transformers' own, including stepping over the final separator and padding
    // (offsets (0, 0)) when the answer starts in the window's last context token.
    let mut start = first;
    while start < offsets.len() && offsets[start].0 <= start_char {
        start += 1;
    }
    let mut end = last as isize;
    while end >= 0 && offsets[end as usize].1 >= end_char {
        end -= 1;
    }
    ((start - 1) as u32, (end + 1) as u32)
}

/// A padded batch with its labels.
#[derive(Clone, Debug)]
pub struct TrainBatch {
    /// Model inputs.
    pub input: ModelInput,
    /// Answer start token per row, `[batch]` u32.
    pub start_positions: Tensor,
    /// Answer end token per row, `[batch]` u32.
    pub end_positions: Tensor,
}

impl TrainBatch {
    /// Stacks features (all of the same length) into tensors on `device`.
    pub fn from_features(features: &[&TrainFeature], device: &Device) -> Result<Self> {
        let rows = |f: fn(&TrainFeature) -> &Vec<u32>| -> Vec<Vec<u32>> {
            features.iter().map(|x| f(x).clone()).collect()
        };
        Self::from_rows(
            &rows(|f| &f.input_ids),
            &rows(|f| &f.token_type_ids),
            &rows(|f| &f.attention_mask),
            &features
                .iter()
                .map(|f| f.start_position)
                .collect::<Vec<_>>(),
            &features.iter().map(|f| f.end_position).collect::<Vec<_>>(),
            device,
        )
    }

    /// Builds a batch from rows of equal length.
    pub fn from_rows(
        input_ids: &[Vec<u32>],
        token_type_ids: &[Vec<u32>],
        attention_mask: &[Vec<u32>],
        start_positions: &[u32],
        end_positions: &[u32],
        device: &Device,
    ) -> Result<Self> {
        let b = input_ids.len();
        let s = input_ids.first().map_or(0, Vec::len);
        let stack = |rows: &[Vec<u32>], what: &str| -> Result<Tensor> {
            if rows.len() != b || rows.iter().any(|r| r.len() != s) {
                return Err(Error::InvalidInput(format!(
                    "batch {what}: every row must hold {s} tokens and there must be {b} rows"
                )));
            }
            Ok(Tensor::from_vec(rows.concat(), (b, s), device)?)
        };
        if start_positions.len() != b || end_positions.len() != b {
            return Err(Error::InvalidInput(format!(
                "batch labels: expected {b} start and end positions"
            )));
        }
        Ok(Self {
            input: ModelInput {
                input_ids: stack(input_ids, "input_ids")?,
                token_type_ids: stack(token_type_ids, "token_type_ids")?,
                attention_mask: stack(attention_mask, "attention_mask")?,
            },
            start_positions: Tensor::new(start_positions, device)?,
            end_positions: Tensor::new(end_positions, device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_span_finds_the_tokens_of_the_answer() {
        // [CLS] q [SEP] "the" "big" "cat" [SEP] pad
        let offsets = [
            (0, 0),
            (0, 1),
            (0, 0),
            (0, 3),
            (4, 7),
            (8, 11),
            (0, 0),
            (0, 0),
        ];
        let seq = [None, Some(0), None, Some(1), Some(1), Some(1), None];
        assert_eq!(label_span(&offsets, &seq, 4, 7), (4, 4));
        assert_eq!(label_span(&offsets, &seq, 0, 7), (3, 4));
        // Answer beyond the window → CLS.
        assert_eq!(label_span(&offsets, &seq, 8, 15), (0, 0));
        // Starting in the last context token: transformers' walk runs into the padding.
        assert_eq!(label_span(&offsets, &seq, 8, 11), (7, 5));
    }

    #[test]
    fn answer_start_is_checked_in_characters() {
        let ctx = "Café au lait";
        let ok = SquadAnswer {
            text: "au".into(),
            answer_start: 5,
        };
        let bad = SquadAnswer {
            text: "au".into(),
            answer_start: 6,
        };
        assert!(answer_matches(ctx, &ok));
        assert!(!answer_matches(ctx, &bad));
        let past_end = SquadAnswer {
            text: "lait!".into(),
            answer_start: 8,
        };
        assert!(!answer_matches(ctx, &past_end));
    }
}
