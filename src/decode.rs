//! Start/end logits → answer spans, exactly as transformers' question-answering pipeline
//! (`select_starts_ends`, `decode_spans`, `postprocess`).
//!
//! Per window: logits of tokens that cannot be answers are set to −10000, each of start and end
//! goes through a softmax over the window, the null score is `p_start(CLS)·p_end(CLS)`, and
//! candidate spans `i ≤ j < i + max_answer_len` over context tokens are ranked by
//! `p_start(i)·p_end(j)`. A window with fewer such spans than the pipeline asks it for
//! (`2·top_k + 10`, or `top_k` without word alignment) makes up the difference with score-0
//! spans, as `decode_spans` does (see [`zero_spans`]): a short context with a large `top_k` gets
//! `top_k` answers where it has them, some of them scored 0.0. Spans of all windows are pooled —
//! spans with the same answer text merged, their scores added — and sorted by score (stably,
//! first-seen order breaking ties, as Python's `sorted`); the best `top_k` are returned.

use std::collections::HashMap;

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

/// A window's start and end probabilities (masked softmax, CLS set to 0 afterwards) and its
/// null score `p_start(CLS)·p_end(CLS)`, as `select_starts_ends` computes them.
fn window_probs(
    start_logits: &[f32],
    end_logits: &[f32],
    p_mask: &[bool],
) -> (Vec<f32>, Vec<f32>, f32) {
    let mut p_start = masked_softmax(start_logits, p_mask);
    let mut p_end = masked_softmax(end_logits, p_mask);
    let null_score = p_start[0] * p_end[0];
    p_start[0] = 0.0;
    p_end[0] = 0.0;
    (p_start, p_end, null_score)
}

/// Every span `(i, j)` with a positive score, `i ≤ j < i + max_answer_len` over allowed tokens,
/// in flattened `(i, j)` order.
fn scored_spans(
    p_start: &[f32],
    p_end: &[f32],
    p_mask: &[bool],
    max_answer_len: usize,
) -> Vec<TokenSpan> {
    let n = p_start.len();
    let mut spans = Vec::new();
    for i in (0..n).filter(|&i| !p_mask[i] && p_start[i] != 0.0) {
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
    spans
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
    let (p_start, p_end, null_score) = window_probs(start_logits, end_logits, p_mask);
    let mut spans = scored_spans(&p_start, &p_end, p_mask, max_answer_len);
    // Descending by score; the flattened (start, end) index breaks exact ties.
    spans.sort_by(|a, b| b.score.total_cmp(&a.score));
    spans.truncate(top_k);
    (spans, null_score)
}

/// The score-0 spans the pipeline's `decode_spans` takes when a window has fewer than `k`
/// spans with a score.
///
/// `decode_spans` picks the best `k` cells of the whole `n × n` score matrix, zeros included
/// (spans that end before they start, run longer than `max_answer_len`, or touch the CLS token
/// or the question), and only then drops the cells whose start or end is not an allowed token
/// (context or CLS). So when `scored` (the number of positive cells) is below `k`, the
/// `k − scored` remaining picks are zero cells, some of them allowed. numpy leaves the order of
/// equal values to its selection algorithm; here the zero cells are taken in flattened
/// `(i, j)` order, which starts with `(CLS, CLS)` — the empty answer at 0..0 — then the spans
/// from CLS to each context token (the context's prefixes).
fn zero_spans<'a>(
    p_start: &'a [f32],
    p_end: &'a [f32],
    p_mask: &'a [bool],
    max_answer_len: usize,
    budget: usize,
) -> impl Iterator<Item = TokenSpan> + 'a {
    let n = p_start.len();
    let scored = move |i: usize, j: usize| {
        !p_mask[i]
            && !p_mask[j]
            && i <= j
            && j - i < max_answer_len.max(1)
            && p_start[i] * p_end[j] > 0.0
    };
    (0..n)
        .flat_map(move |i| (0..n).map(move |j| (i, j)))
        .filter(move |&(i, j)| !scored(i, j))
        .take(budget)
        .filter(move |&(i, j)| !p_mask[i] && !p_mask[j])
        .map(|(start, end)| TokenSpan {
            start,
            end,
            score: 0.0,
        })
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
    let mut answers: Vec<Answer> = Vec::new();
    // Lower-cased answer text → its index in `answers`.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (window, (start_logits, end_logits)) in windows.iter().zip(logits) {
        let n = window.len();
        let (p_start, p_end, null) =
            window_probs(&start_logits[..n], &end_logits[..n], &window.p_mask);
        min_null_score = min_null_score.min(null);
        let mut spans = scored_spans(&p_start, &p_end, &window.p_mask, params.max_answer_len);
        spans.sort_by(|a, b| b.score.total_cmp(&a.score));
        spans.truncate(pre_top_k);
        let add =
            |span: TokenSpan, answers: &mut Vec<Answer>, seen: &mut HashMap<String, usize>| {
                let (start, end) = char_span(window, span.start, span.end, params.align_to_words);
                let text = slice(start, end);
                // Spans that give the same text (case-insensitively) are one answer whose score is
                // the sum of theirs, kept at the first one's offsets (the pipeline's `get_answer`).
                let key = text.to_lowercase();
                match seen.get(&key) {
                    Some(&k) => answers[k].score += span.score,
                    None => {
                        seen.insert(key, answers.len());
                        answers.push(Answer {
                            score: span.score,
                            start,
                            end,
                            answer: text,
                        });
                    }
                }
            };
        let budget = pre_top_k - spans.len();
        for span in spans {
            add(span, &mut answers, &mut seen);
        }
        // Fewer scored spans than asked for: the pipeline fills up with score-0 spans. Once
        // `top_k` answers are known, later score-0 ones (ties, kept in order) cannot be among
        // the best `top_k`, so the rest are not looked at.
        if budget > 0 {
            let zeros = zero_spans(
                &p_start,
                &p_end,
                &window.p_mask,
                params.max_answer_len,
                budget,
            );
            for span in zeros {
                if seen.len() >= params.top_k {
                    break;
                }
                add(span, &mut answers, &mut seen);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use tokenizers::Tokenizer;

    /// A word-level tokenizer (one token per lower-cased word or punctuation mark) with BERT's
    /// `[CLS] question [SEP] context [SEP]` template: token positions are easy to count by hand.
    fn tokenizer() -> Tokenizer {
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": {
                    "[CLS]": {"id": "[CLS]", "ids": [1], "tokens": ["[CLS]"]},
                    "[SEP]": {"id": "[SEP]", "ids": [2], "tokens": ["[SEP]"]}
                }
            },
            "decoder": null,
            "model": {"type": "WordLevel", "unk_token": "[UNK]", "vocab": {
                "[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "where": 3, "?": 4,
                "new": 5, "york": 6, "city": 7, "paris": 8
            }}
        });
        Tokenizer::from_str(&json.to_string()).expect("test tokenizer")
    }

    /// One window of `question` + `context`, masked as the pipeline masks it (context and CLS
    /// allowed).
    fn window(question: &str, context: &str) -> Window {
        let encoding = tokenizer()
            .encode_char_offsets((question, context), true)
            .expect("encodes");
        let p_mask = encoding
            .get_sequence_ids()
            .iter()
            .zip(encoding.get_ids())
            .map(|(seq, &id)| *seq != Some(1) && id != 1)
            .collect();
        Window { encoding, p_mask }
    }

    /// Logits of the window's tokens: `allowed` for the allowed ones in order (CLS first), and
    /// a value masking will overwrite for the others.
    fn logits(window: &Window, allowed: &[f32]) -> Vec<f32> {
        let mut values = allowed.iter();
        let out: Vec<f32> = window
            .p_mask
            .iter()
            .map(|&m| {
                if m {
                    7.0
                } else {
                    *values.next().expect("enough")
                }
            })
            .collect();
        assert!(values.next().is_none(), "one logit per allowed token");
        out
    }

    fn run(context: &str, starts: &[f32], ends: &[f32], params: &DecodeParams) -> Vec<Answer> {
        let w = window("where ?", context);
        let l = (logits(&w, starts), logits(&w, ends));
        decode(context, &[w], &[l], params).answers
    }

    fn summary(answers: &[Answer]) -> Vec<(String, usize, usize, f32)> {
        answers
            .iter()
            .map(|a| {
                (
                    a.answer.clone(),
                    a.start,
                    a.end,
                    (a.score * 1e6).round() / 1e6,
                )
            })
            .collect()
    }

    fn params(top_k: usize, max_answer_len: usize) -> DecodeParams {
        DecodeParams {
            top_k,
            max_answer_len,
            ..DecodeParams::default()
        }
    }

    #[test]
    fn one_word_context_with_top_k_5_adds_the_score_0_empty_answer() {
        // [CLS] where ? [SEP] paris [SEP]: CLS and "paris" (token 4) allowed; logits 1 and 3 give
        // p(paris) = 1/(1+e^-2) = 0.880797 for start and end, score 0.880797² = 0.775803.
        // 20 picks (2·5+10), one span with a score: 19 score-0 cells in (i, j) order, i.e. row
        // CLS — (CLS, CLS) is the empty answer at 0..0, (CLS, paris) is 0..5 "Paris" again
        // (merged, +0.0) — then question rows, which are dropped.
        let answers = run("Paris", &[1.0, 3.0], &[1.0, 3.0], &params(5, 15));
        assert_eq!(
            summary(&answers),
            vec![
                ("Paris".to_string(), 0, 5, 0.775803),
                (String::new(), 0, 0, 0.0)
            ]
        );
        // top_k = 1 asks for no filling: the one scored span alone.
        let answers = run("Paris", &[1.0, 3.0], &[1.0, 3.0], &params(1, 15));
        assert_eq!(
            summary(&answers),
            vec![("Paris".to_string(), 0, 5, 0.775803)]
        );
    }

    /// "New York City" (tokens 4, 5, 6), max_answer_len 1: three one-word spans with a score.
    /// Start logits CLS 0, new 2, york 1, city 0.5 and end logits CLS 0, new 0.5, york 2, city 1
    /// give (softmax over the four allowed tokens, by hand) p_start = [0.078394, 0.579259,
    /// 0.213097, 0.129250] and p_end = [0.078394, 0.129250, 0.579259, 0.213097]: new
    /// 0.579259 · 0.129250 = 0.074869, york 0.213097 · 0.579259 = 0.123438, city
    /// 0.129250 · 0.213097 = 0.027543; null 0.078394² = 0.006146.
    const NYC_START: [f32; 4] = [0.0, 2.0, 1.0, 0.5];
    const NYC_END: [f32; 4] = [0.0, 0.5, 2.0, 1.0];

    #[test]
    fn score_0_spans_fill_up_in_flattened_order() {
        let scored = [
            ("York".to_string(), 4, 8, 0.123438),
            ("New".to_string(), 0, 3, 0.074869),
            ("City".to_string(), 9, 13, 0.027543),
        ];
        // top_k 5: 20 picks, 3 scored, 17 zero cells: the 8 of row CLS ("" 0..0, then the
        // prefixes "New" (merged), "New York", "New York City") and 9 of the question rows.
        // Six distinct answers, the best five kept.
        let answers = run("New York City", &NYC_START, &NYC_END, &params(5, 1));
        let mut expected = scored.to_vec();
        expected.push((String::new(), 0, 0, 0.0));
        expected.push(("New York".to_string(), 0, 8, 0.0));
        assert_eq!(summary(&answers), expected);

        // top_k 20: 50 picks, 47 zero cells: rows CLS, where, ?, [SEP] (32 cells), row "new"
        // (7 zero cells: the too-long spans "New York", "New York City", merged) and row
        // "york" (7 zero cells: the too-long span "York City" is new; (york, new) ends before it
        // starts, "" merged). 3 + 4 answers: fewer than top_k, all of them.
        let answers = run("New York City", &NYC_START, &NYC_END, &params(20, 1));
        let mut expected = scored.to_vec();
        expected.push((String::new(), 0, 0, 0.0));
        expected.push(("New York".to_string(), 0, 8, 0.0));
        expected.push(("New York City".to_string(), 0, 13, 0.0));
        expected.push(("York City".to_string(), 4, 13, 0.0));
        assert_eq!(summary(&answers), expected);
    }

    #[test]
    fn zero_fill_stays_behind_the_impossible_answer_and_within_top_k() {
        // handle_impossible_answer: the null score 0.006146 ranks above every score-0 answer.
        let p = DecodeParams {
            handle_impossible_answer: true,
            ..params(6, 1)
        };
        let answers = run("New York City", &NYC_START, &NYC_END, &p);
        assert_eq!(
            summary(&answers),
            vec![
                ("York".to_string(), 4, 8, 0.123438),
                ("New".to_string(), 0, 3, 0.074869),
                ("City".to_string(), 9, 13, 0.027543),
                (String::new(), 0, 0, 0.006146),
                (String::new(), 0, 0, 0.0),
                ("New York".to_string(), 0, 8, 0.0),
            ]
        );
    }

    #[test]
    fn without_word_alignment_the_window_is_asked_for_top_k_spans_only() {
        // align_to_words false: top_k picks, not 2·top_k + 10. top_k 4 over 3 scored spans
        // leaves one zero cell, (CLS, CLS).
        let p = DecodeParams {
            align_to_words: false,
            ..params(4, 1)
        };
        let answers = run("New York City", &NYC_START, &NYC_END, &p);
        assert_eq!(answers.len(), 4);
        assert_eq!(summary(&answers)[3], (String::new(), 0, 0, 0.0));
    }

    #[test]
    fn zero_spans_take_their_budget_from_every_cell_and_keep_allowed_ones() {
        // 3 tokens: CLS (allowed), a question token (masked), a context token (allowed).
        let p_mask = [false, true, false];
        let p_start = [0.0, 0.0, 1.0];
        let p_end = [0.0, 0.0, 1.0];
        let cells = |budget| -> Vec<(usize, usize)> {
            zero_spans(&p_start, &p_end, &p_mask, 15, budget)
                .map(|s| (s.start, s.end))
                .collect()
        };
        // Flattened order: (0,0) (0,1)✗ (0,2) (1,0)✗ (1,1)✗ (1,2)✗ (2,0) (2,1)✗; (2,2) has a
        // score and is not a zero cell.
        assert_eq!(cells(1), vec![(0, 0)]);
        assert_eq!(cells(2), vec![(0, 0)]);
        assert_eq!(cells(3), vec![(0, 0), (0, 2)]);
        assert_eq!(cells(100), vec![(0, 0), (0, 2), (2, 0)]);
    }
}
