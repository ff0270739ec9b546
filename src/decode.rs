//! Start/end logits → answer spans, exactly as transformers' question-answering pipeline
//! (`select_starts_ends`, `decode_spans`, `postprocess`).
//!
//! Per window: logits of tokens that cannot be answers are set to −10000, each of start and end
//! goes through a softmax over the window, the null score is `p_start(CLS)·p_end(CLS)`, and
//! candidate spans `i ≤ j < i + max_answer_len` over context tokens are ranked by
//! `p_start(i)·p_end(j)`. Spans of all windows are pooled — spans with the same answer text
//! merged, their scores added — and sorted by score (stably, first-seen order breaking ties, as
//! Python's `sorted`); the best `top_k` are returned.

use crate::engine::WindowLogits;
use crate::features::Window;

/// Decoding parameters, named as the pipeline's keyword arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeParams {
    /// Number of answers to return.
    pub top_k: usize,
    /// Longest answer, in tokens.
    pub max_answer_len: usize,
    /// Also offer the empty answer, scored by the smallest CLS score over windows.
    pub handle_impossible_answer: bool,
    /// Widen spans to whole words (tokenizer word boundaries).
    pub align_to_words: bool,
}

impl Default for DecodeParams {
    fn default() -> Self {
        Self {
            top_k: 1,
            max_answer_len: 15,
            handle_impossible_answer: false,
            align_to_words: true,
        }
    }
}

/// One answer: text, probability score and its position in the context.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"score": 0.32063043, "start": 11, "end": 40, "answer": "Wolfgang and I live in Berlin"}))]
pub struct Answer {
    /// `p_start · p_end` of the span (for the empty answer: the null score).
    pub score: f32,
    /// Start, in characters (Unicode scalar values) into the context.
    pub start: usize,
    /// End (exclusive), in characters.
    pub end: usize,
    /// `context[start..end]` (by characters); empty for "no answer".
    pub answer: String,
}

impl Answer {
    /// The answer's byte range in `context` (for slicing a Rust `&str`).
    pub fn byte_range(&self, context: &str) -> std::ops::Range<usize> {
        let start = char_to_byte(context, self.start);
        let end = char_to_byte(context, self.end);
        start..end.max(start)
    }

    /// True for the "no answer" entry of `handle_impossible_answer`.
    pub fn is_impossible(&self) -> bool {
        self.start == 0 && self.end == 0 && self.answer.is_empty()
    }
}

/// Byte offset of the `chars`-th character of `s` (or `s.len()` past the end).
pub fn char_to_byte(s: &str, chars: usize) -> usize {
    s.char_indices().nth(chars).map_or(s.len(), |(b, _)| b)
}

/// Softmax over `logits` with masked positions set to −10000 first, in f32 as numpy does.
fn masked_softmax(logits: &[f32], p_mask: &[bool]) -> Vec<f32> {
    let masked: Vec<f32> = logits
        .iter()
        .zip(p_mask)
        .map(|(&l, &m)| if m { -10000.0 } else { l })
        .collect();
    let max = masked.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = masked.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().map(|&x| x as f64).sum::<f64>() as f32;
    exp.into_iter().map(|x| x / sum).collect()
}

/// A candidate span within one window, in token indices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenSpan {
    /// First token.
    pub start: usize,
    /// Last token (inclusive).
    pub end: usize,
    /// `p_start(start) · p_end(end)`.
    pub score: f32,
}

/// The best `top_k` spans of one window and its null score (`p_start(0)·p_end(0)`).
///
/// `start_logits`/`end_logits`/`p_mask` cover the window's real tokens (no padding).
pub fn best_spans(
    start_logits: &[f32],
    end_logits: &[f32],
    p_mask: &[bool],
    top_k: usize,
    max_answer_len: usize,
) -> (Vec<TokenSpan>, f32) {
    let mut p_start = masked_softmax(start_logits, p_mask);
    let mut p_end = masked_softmax(end_logits, p_mask);
    let null_score = p_start[0] * p_end[0];
    p_start[0] = 0.0;
    p_end[0] = 0.0;
    let n = p_start.len();
    let allowed: Vec<usize> = (0..n).filter(|&i| !p_mask[i]).collect();
    let mut spans = Vec::new();
    for &i in &allowed {
        if p_start[i] == 0.0 {
            continue;
        }
        // Saturating: any length past the window (up to usize::MAX) means "no limit".
        let last = i.saturating_add(max_answer_len.max(1) - 1).min(n - 1);
        for j in i..=last {
            if !p_mask[j] {
                let score = p_start[i] * p_end[j];
                if score > 0.0 {
                    spans.push(TokenSpan {
                        start: i,
                        end: j,
                        score,
                    });
                }
            }
        }
    }
    // Descending by score; the flattened (start, end) index breaks exact ties.
    spans.sort_by(|a, b| b.score.total_cmp(&a.score));
    spans.truncate(top_k);
    (spans, null_score)
}

/// Character span of tokens `s..=e` of `window` in the context. With `align_to_words`, the span
/// is widened to the words containing those tokens (when the tokenizer knows words), as the
/// pipeline's `get_indices` does.
pub fn char_span(window: &Window, s: usize, e: usize, align_to_words: bool) -> (usize, usize) {
    let enc = &window.encoding;
    let offsets = enc.get_offsets();
    if align_to_words {
        let word_chars = |t: usize| {
            let (_, word) = enc.token_to_word(t)?;
            enc.word_to_chars(word, 1)
        };
        if let (Some(a), Some(b)) = (word_chars(s), word_chars(e)) {
            return (a.0, b.1);
        }
    }
    (offsets[s].0, offsets[e].1)
}

/// The answers to one question, and its score for "no answer".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    /// The best `top_k` answers, best first (with the empty answer among them when
    /// `handle_impossible_answer` asked for it).
    pub answers: Vec<Answer>,
    /// The pipeline's null score: the smallest `p_start(CLS)·p_end(CLS)` over windows (SQuAD
    /// v2's no-answer probability).
    pub null_score: f32,
}

/// Pools the spans of all windows of one (question, context) pair into the final answers.
///
/// `logits[w]` holds the start and end logits of `windows[w]`, each at least as long as the window.
pub fn decode(
    context: &str,
    windows: &[Window],
    logits: &[WindowLogits],
    params: &DecodeParams,
) -> Decoded {
    // Word alignment may merge candidates, so the pipeline asks each window for more of them.
    let pre_top_k = if params.align_to_words {
        params.top_k.saturating_mul(2).saturating_add(10)
    } else {
        params.top_k
    };
    let chars: Vec<(usize, char)> = context.char_indices().collect();
    let slice = |start: usize, end: usize| -> String {
        if start >= end || start >= chars.len() {
            return String::new();
        }
        let b0 = chars[start].0;
        let b1 = chars.get(end).map_or(context.len(), |c| c.0);
        context[b0..b1].to_string()
    };
    let mut min_null_score = 1_000_000f32;
    let mut answers: Vec<(String, Answer)> = Vec::new();
    for (window, (start_logits, end_logits)) in windows.iter().zip(logits) {
        let n = window.len();
        let (spans, null) = best_spans(
            &start_logits[..n],
            &end_logits[..n],
            &window.p_mask,
            pre_top_k,
            params.max_answer_len,
        );
        min_null_score = min_null_score.min(null);
        for span in spans {
            let (start, end) = char_span(window, span.start, span.end, params.align_to_words);
            let text = slice(start, end);
            // Spans that give the same text (case-insensitively) are one answer whose score is
            // the sum of theirs, kept at the first one's offsets (the pipeline's `get_answer`).
            let key = text.to_lowercase();
            match answers.iter_mut().find(|(k, _)| *k == key) {
                Some((_, a)) => a.score += span.score,
                None => answers.push((
                    key,
                    Answer {
                        score: span.score,
                        start,
                        end,
                        answer: text,
                    },
                )),
            }
        }
    }
    let mut answers: Vec<Answer> = answers.into_iter().map(|(_, a)| a).collect();
    if params.handle_impossible_answer {
        answers.push(Answer {
            score: min_null_score,
            start: 0,
            end: 0,
            answer: String::new(),
        });
    }
    // Stable: equal scores keep window order, as Python's sorted(reverse=True).
    answers.sort_by(|a, b| b.score.total_cmp(&a.score));
    answers.truncate(params.top_k);
    Decoded {
        answers,
        null_score: min_null_score,
    }
}
