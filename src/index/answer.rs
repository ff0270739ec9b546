//! Answers over an index: retrieve passages with BM25, read them all in batches, rank the
//! answers across passages.
//!
//! The pipeline's score is a softmax probability within one window: each passage's best span
//! gets a high probability when it is the best of a bad lot, so those scores do not compare
//! across passages (reading three passages instead of one made Haystack's answers worse). Here
//! every candidate span is ranked by
//!
//! ```text
//! z = start_logit + end_logit  +  RETRIEVAL_WEIGHT · ln(bm25 / best bm25 of the question)
//! ```
//!
//! The raw logits are not normalised per window, so a span the model is sure of in one
//! passage can outrank a span that is merely the least bad in another; the BM25 term adds what
//! the reader cannot see — how well the passage as a whole matches the question compared with
//! the others found (0 for the best passage, negative for worse ones). Measured on XQuAD, the
//! reader's logits alone rank badly across passages (3 passages read: EM 32.9 against 43.7 for
//! the first passage alone), so the weight is high: a span of a passage with 90% of the best
//! BM25 score needs 2.1 more logit to win, one with half of it 13.9. The reported `score` is
//! the softmax of `z` over all candidate spans of the question, so scores of one question
//! compare across passages and documents and sum to at most 1. The weight and the number of
//! passages read were chosen by measurement (`bench/odqa_weights.py`; see the README section
//! *Asking a collection of documents*).

use std::borrow::Borrow;

use rayon::prelude::*;

use super::passages::readable_part;
use super::{Hit, Index, Retrieval};
use crate::decode::{best_spans, char_span};
use crate::engine::WindowLogits;
use crate::error::{Error, Result};
use crate::params::QaParams;
use crate::pipeline::{Prepared, QaPipeline, QaRequest};

/// Passages read per question by default.
pub const DEFAULT_PASSAGES: usize = 3;

/// Most passages read per question (bounds the work one question can ask for).
pub const MAX_PASSAGES: usize = 1000;

/// Default weight of the BM25 term in the ranking of answers (see the module docs).
pub const DEFAULT_RETRIEVAL_WEIGHT: f32 = 20.0;

/// Candidate spans taken from each window (the pipeline's own pool for one answer).
const SPANS_PER_WINDOW: usize = 12;

/// How to answer over an index.
#[derive(Clone, Debug, PartialEq)]
pub struct AskOptions {
    /// Passages retrieved and read per question.
    pub passages: usize,
    /// Weight of the BM25 term in the ranking (0: the reader's logits alone).
    pub retrieval_weight: f32,
    /// Reading parameters: `top_k` is the number of answers, the others as for one passage
    /// (`handle_impossible_answer` is not used).
    pub params: QaParams,
}

impl Default for AskOptions {
    fn default() -> Self {
        Self {
            passages: DEFAULT_PASSAGES,
            retrieval_weight: DEFAULT_RETRIEVAL_WEIGHT,
            params: QaParams::default(),
        }
    }
}

/// One answer found in the collection.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct DocumentAnswer {
    /// The answer text: `document[start..end]` by characters.
    pub answer: String,
    /// Softmax of the ranking score over the question's candidate spans (see the module docs).
    pub score: f32,
    /// Start in the document, in characters (Unicode scalar values).
    pub start: usize,
    /// End (exclusive) in the document, in characters.
    pub end: usize,
    /// The document's id.
    pub doc_id: String,
    /// The document's title.
    pub title: String,
    /// The file the document came from.
    pub path: String,
    /// The passage the answer was read in.
    pub passage: PassageText,
    /// The passage's BM25 score for the question.
    pub retrieval_score: f32,
    /// `start_logit + end_logit` of the span.
    pub reader_logit: f32,
}

/// The passage an answer was read in.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct PassageText {
    /// Its first character in the document.
    pub start: usize,
    /// Its end (exclusive) in the document, in characters.
    pub end: usize,
    /// Its text; the answer is `text[answer.start - start..answer.end - start]` by characters.
    pub text: String,
}

/// The answers to one question, best first.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct DocumentAnswers {
    /// Best first; empty when nothing was found (see `reason`).
    pub answers: Vec<DocumentAnswer>,
    /// Passages read.
    pub passages_read: usize,
    /// Why there is no answer, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What was not read as it is: a passage over the passage bounds (from an index written
    /// before passages were bounded) is read up to them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A span the reader proposes in one passage.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanCandidate {
    /// The text.
    pub text: String,
    /// Start in the passage, in characters.
    pub start: usize,
    /// End (exclusive) in the passage, in characters.
    pub end: usize,
    /// `start_logit + end_logit`.
    pub logit: f32,
    /// The pipeline's probability of the span within its window.
    pub probability: f32,
}

impl QaPipeline {
    /// Answers `questions` over `index`: the best [`AskOptions::passages`] passages of each by
    /// BM25 are read (windows of all questions batched together) and the answers ranked
    /// across them (see [`crate::index::answer`]). A question without searchable words, or
    /// whose words are in no passage, gets no answers and a reason. An empty index is an
    /// error.
    pub fn answer_over<Q: AsRef<str>>(
        &self,
        index: &Index,
        questions: &[Q],
        options: &AskOptions,
    ) -> Result<Vec<DocumentAnswers>> {
        if index.stats().passages == 0 {
            return Err(Error::Index {
                path: index.dir().to_path_buf(),
                message: "it holds no passages; add documents with \
                          `bertqa index --index DIR PATH...`"
                    .into(),
            });
        }
        if options.passages == 0 || options.passages > MAX_PASSAGES {
            return Err(Error::InvalidParameter {
                name: "passages",
                message: format!("must be from 1 to {MAX_PASSAGES}"),
            });
        }
        let retrievals = questions
            .iter()
            .map(|q| {
                let q = q.as_ref();
                if q.trim().is_empty() {
                    return Err(Error::InvalidInput("the question is empty".into()));
                }
                index.search(q, options.passages)
            })
            .collect::<Result<Vec<_>>>()?;
        self.answer_retrieved(questions, &retrievals, options)
    }

    /// [`QaPipeline::answer_over`] on passages already retrieved: `retrievals[q]` holds
    /// question `q`'s passages (from [`Index::search`]).
    pub fn answer_retrieved<Q: AsRef<str>>(
        &self,
        questions: &[Q],
        retrievals: &[Retrieval],
        options: &AskOptions,
    ) -> Result<Vec<DocumentAnswers>> {
        if options.params.top_k == Some(0) {
            return Err(Error::InvalidParameter {
                name: "top_k",
                message: "must be at least 1".into(),
            });
        }
        let hits: Vec<&[Hit]> = retrievals.iter().map(|r| r.hits.as_slice()).collect();
        let questions: Vec<&str> = questions.iter().map(AsRef::as_ref).collect();
        let (prepared, counts) = self.prepare_all(&questions, &hits, &options.params)?;
        // One model run over the windows of every passage of every question.
        let logits = self.run_prepared(&prepared, |_| {})?;
        let mut offset = 0;
        Ok(retrievals
            .iter()
            .zip(counts)
            .map(|(retrieval, n)| {
                let range = offset..offset + n;
                offset += n;
                rank_read(retrieval, &prepared[range.clone()], &logits[range], options)
            })
            .collect())
    }

    /// The windows of every passage of every question, flat, and how many passages each
    /// question has.
    fn prepare_all(
        &self,
        questions: &[&str],
        hits: &[&[Hit]],
        params: &QaParams,
    ) -> Result<(Vec<Prepared>, Vec<usize>)> {
        let per_question = questions
            .par_iter()
            .zip(hits)
            .map(|(q, h)| self.prepare_hits(q, h, params))
            .collect::<Result<Vec<_>>>()?;
        let counts = per_question.iter().map(Vec::len).collect();
        Ok((per_question.into_iter().flatten().collect(), counts))
    }

    /// Cuts each passage found for `question` into windows (in parallel), ready for
    /// [`QaPipeline::run_prepared`] or a server's batcher; [`rank_read`] ranks what the model
    /// makes of them.
    pub fn prepare_hits(
        &self,
        question: &str,
        hits: &[Hit],
        params: &QaParams,
    ) -> Result<Vec<Prepared>> {
        let reading = QaParams {
            top_k: Some(1),
            handle_impossible_answer: None,
            ..params.clone()
        };
        // Context tokens one window holds beside the question. The window is `max_seq_len`
        // tokens, or the default length where that is longer, so that a shorter `max_seq_len`
        // reads the same text in more windows. None fit: `prepare` says so.
        let default = self.default_max_seq_len();
        let window = params.max_seq_len.unwrap_or(default).max(default);
        let room = self.tokenizer().context_room(question, window).ok();
        hits.par_iter()
            .map(|hit| {
                // A passage is never refused for its size: see `readable_part`.
                let passage = readable_part(&hit.passage.text);
                let context = match room {
                    Some((room, _)) => self.first_tokens_of(passage, room)?,
                    None => passage,
                };
                self.prepare(&QaRequest {
                    question: question.to_string(),
                    context: context.to_string(),
                    params: reading.clone(),
                })
            })
            .collect()
    }

    /// The beginning of `passage` that `room` context tokens hold: all of a passage within the
    /// index's bounds in the text those bounds are made for; the first tokens of one whose
    /// text this model cuts into more tokens (figures, long words, scripts its vocabulary
    /// lacks), cut at a space where there is one.
    fn first_tokens_of<'p>(&self, passage: &'p str, room: usize) -> Result<&'p str> {
        let encoding = self
            .tokenizer()
            .tokenizer()
            .encode_char_offsets(passage, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let Some(&(first_unread, _)) = encoding.get_offsets().get(room) else {
            return Ok(passage);
        };
        // Never nothing: a first character of several tokens is read all the same.
        let cut = passage
            .char_indices()
            .nth(first_unread.max(1))
            .map_or(passage.len(), |(byte, _)| byte);
        let head = &passage[..cut];
        // At the last space, so that no word is read in part; at the token when there is none.
        let at_space = head
            .trim_end_matches(|c: char| !c.is_whitespace())
            .trim_end();
        Ok(if at_space.is_empty() {
            head.trim_end()
        } else {
            at_space
        })
    }

    /// Reads the passages found for each question: `hits[q]` are question `q`'s passages.
    /// Returns, per question and passage, the candidate spans with their raw logits (windows
    /// of all questions are batched together).
    pub fn read_hits(
        &self,
        questions: &[&str],
        hits: &[&[Hit]],
        params: &QaParams,
    ) -> Result<Vec<Vec<Vec<SpanCandidate>>>> {
        let (prepared, counts) = self.prepare_all(questions, hits, params)?;
        let logits = self.run_prepared(&prepared, |_| {})?;
        let mut candidates = prepared
            .par_iter()
            .zip(&logits)
            .map(|(p, l)| span_candidates(p, l))
            .collect::<Vec<_>>()
            .into_iter();
        Ok(counts
            .into_iter()
            .map(|n| candidates.by_ref().take(n).collect())
            .collect())
    }
}

/// The answers to one question from the model's logits on its passages: `prepared[i]` and
/// `logits[i]` belong to `retrieval.hits[i]` (see [`QaPipeline::prepare_hits`]).
pub fn rank_read<P: Borrow<Prepared>>(
    retrieval: &Retrieval,
    prepared: &[P],
    logits: &[Vec<WindowLogits>],
    options: &AskOptions,
) -> DocumentAnswers {
    let candidates: Vec<Vec<SpanCandidate>> = prepared
        .iter()
        .zip(logits)
        .map(|(p, l)| span_candidates(p.borrow(), l))
        .collect();
    let top_k = options.params.decode_params().top_k;
    let answers = rank(
        &retrieval.hits,
        &candidates,
        options.retrieval_weight,
        top_k,
    );
    let reason = if retrieval.terms.is_empty() {
        Some("the question has no word to search for")
    } else if retrieval.hits.is_empty() {
        Some("no passage holds any word of the question")
    } else if answers.is_empty() {
        Some("the reader found no answer span")
    } else {
        None
    };
    let warnings = retrieval
        .hits
        .iter()
        .zip(prepared)
        .filter_map(|(hit, prepared)| {
            let p = &hit.passage;
            let read = prepared.borrow().context.chars().count();
            if read >= p.text.chars().count() {
                return None;
            }
            let (why, advice) = if readable_part(&p.text).len() < p.text.len() {
                (
                    "is over the passage bounds",
                    " (index the file again to cut it)",
                )
            } else {
                (
                    "has more tokens than one window holds beside the question",
                    "",
                )
            };
            Some(format!(
                "the passage at characters {}..{} of {} {why}; only its first {read} characters \
                 were read{advice}",
                p.start, p.end, p.path,
            ))
        })
        .collect();
    DocumentAnswers {
        answers,
        passages_read: retrieval.hits.len(),
        reason: reason.map(str::to_string),
        warnings,
    }
}

/// The best spans of every window of one passage with their raw logits; spans with the same
/// text (case-insensitively) are one candidate, at the offsets of its best logit.
pub fn span_candidates(prepared: &Prepared, logits: &[WindowLogits]) -> Vec<SpanCandidate> {
    let context = &prepared.context;
    let chars: Vec<usize> = context.char_indices().map(|(b, _)| b).collect();
    let byte = |c: usize| chars.get(c).copied().unwrap_or(context.len());
    let mut out: Vec<SpanCandidate> = Vec::new();
    for (window, (start_logits, end_logits)) in prepared.windows.iter().zip(logits) {
        let n = window.len();
        let (spans, _) = best_spans(
            &start_logits[..n],
            &end_logits[..n],
            &window.p_mask,
            SPANS_PER_WINDOW,
            prepared.decode_params.max_answer_len,
        );
        for span in spans {
            let (start, end) = char_span(
                window,
                span.start,
                span.end,
                prepared.decode_params.align_to_words,
            );
            if start >= end {
                continue;
            }
            let text = &context[byte(start)..byte(end)];
            let logit = start_logits[span.start] + end_logits[span.end];
            let key = text.to_lowercase();
            match out.iter_mut().find(|c| c.text.to_lowercase() == key) {
                Some(c) if c.logit >= logit => {}
                Some(c) => {
                    *c = SpanCandidate {
                        text: text.to_string(),
                        start,
                        end,
                        logit,
                        probability: span.score,
                    }
                }
                None => out.push(SpanCandidate {
                    text: text.to_string(),
                    start,
                    end,
                    logit,
                    probability: span.score,
                }),
            }
        }
    }
    out
}

/// Ranks the candidates of all passages of one question (see the module docs) and returns the
/// best `top_k` distinct answers.
fn rank(
    hits: &[Hit],
    candidates: &[Vec<SpanCandidate>],
    retrieval_weight: f32,
    top_k: usize,
) -> Vec<DocumentAnswer> {
    let best_bm25 = hits
        .iter()
        .map(|h| h.score)
        .fold(f32::MIN_POSITIVE, f32::max);
    let mut scored: Vec<(f32, &Hit, &SpanCandidate)> = hits
        .iter()
        .zip(candidates)
        .flat_map(|(hit, spans)| {
            let prior = retrieval_weight * (hit.score.max(f32::MIN_POSITIVE) / best_bm25).ln();
            spans.iter().map(move |s| (s.logit + prior, hit, s))
        })
        .filter(|(z, _, _)| z.is_finite())
        .collect();
    // Stable: ties keep retrieval order.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let Some(&(best, _, _)) = scored.first() else {
        return Vec::new();
    };
    let total: f64 = scored
        .iter()
        .map(|(z, _, _)| f64::from(z - best).exp())
        .sum();
    let mut answers: Vec<DocumentAnswer> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (z, hit, span) in scored {
        if answers.len() == top_k {
            break;
        }
        let key = span.text.to_lowercase();
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let passage = &hit.passage;
        answers.push(DocumentAnswer {
            answer: span.text.clone(),
            score: (f64::from(z - best).exp() / total) as f32,
            start: passage.start + span.start,
            end: passage.start + span.end,
            doc_id: passage.doc_id.clone(),
            title: passage.title.clone(),
            path: passage.path.clone(),
            passage: PassageText {
                start: passage.start,
                end: passage.end,
                text: passage.text.clone(),
            },
            retrieval_score: hit.score,
            reader_logit: span.logit,
        });
    }
    answers
}
