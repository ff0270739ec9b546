//! The official SQuAD evaluation: `evaluate-v1.1.py` (`exact_match`, `f1`) for v1.1 data and
//! `evaluate-v2.0.py` (`exact`, `f1`, `HasAns_*`, `NoAns_*`, `best_exact`, `best_f1`) for v2.0
//! data: the same answer normalisation, per-question maxima over gold answers and threshold
//! search, summed in the same order.

use std::collections::HashMap;

use serde::Serialize;

use super::data::{SquadDataset, SquadExample, SquadVersion};

/// Python's `str.isspace` (what `str.split()` splits on): Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// A character of `\w` in Python's `re` on `str` patterns (`isalnum()` or `_`). Rust's
/// Alphabetic property stands in for Python's letter categories; the two differ only on a few
/// combining marks, which never sit next to an English article in practice.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The official `normalize_answer`: lower-case, drop ASCII punctuation (`string.punctuation`),
/// drop the articles a/an/the (as the regex `\b(a|an|the)\b`), collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // `\b(a|an|the)\b` matches exactly the maximal runs of word characters that are articles.
    let mut no_articles = String::with_capacity(no_punct.len());
    let mut rest = no_punct.as_str();
    while let Some(c) = rest.chars().next() {
        let run_len = if is_word_char(c) {
            rest.find(|c: char| !is_word_char(c)).unwrap_or(rest.len())
        } else {
            c.len_utf8()
        };
        let (run, tail) = rest.split_at(run_len);
        if matches!(run, "a" | "an" | "the") {
            no_articles.push(' ');
        } else {
            no_articles.push_str(run);
        }
        rest = tail;
    }
    no_articles
        .split(is_python_space)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tokens of the normalised answer (`normalize_answer(s).split()`).
fn answer_tokens(s: &str) -> Vec<String> {
    normalize_answer(s)
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Exact match: the normalised strings are equal (v1.1 `exact_match_score`, v2.0 `compute_exact`).
pub fn exact_match(prediction: &str, gold: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(gold)
}

/// Size of the multiset intersection (`sum((Counter(a) & Counter(b)).values())`).
fn common_tokens(a: &[String], b: &[String]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in a {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0;
    for t in b {
        if let Some(n) = counts.get_mut(t.as_str()) {
            if *n > 0 {
                *n -= 1;
                common += 1;
            }
        }
    }
    common
}

fn f1_of_tokens(pred: &[String], gold: &[String], num_same: usize) -> f64 {
    if num_same == 0 {
        return 0.0;
    }
    let precision = 1.0 * num_same as f64 / pred.len() as f64;
    let recall = 1.0 * num_same as f64 / gold.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// Token F1 of `evaluate-v1.1.py` (`f1_score`): an empty prediction or gold scores 0.
pub fn f1_score(prediction: &str, gold: &str) -> f64 {
    let pred = answer_tokens(prediction);
    let gold = answer_tokens(gold);
    f1_of_tokens(&pred, &gold, common_tokens(&pred, &gold))
}

/// Token F1 of `evaluate-v2.0.py` (`compute_f1`): when either side has no tokens, 1 if both
/// have none (a correct "no answer"), else 0.
pub fn f1_score_v2(prediction: &str, gold: &str) -> f64 {
    let pred = answer_tokens(prediction);
    let gold = answer_tokens(gold);
    if pred.is_empty() || gold.is_empty() {
        return if pred == gold { 1.0 } else { 0.0 };
    }
    f1_of_tokens(&pred, &gold, common_tokens(&pred, &gold))
}

/// Scores of the official v1.1 script, in percent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct V1Metrics {
    /// Percentage of questions whose prediction matches a gold answer exactly (normalised).
    pub exact_match: f64,
    /// Mean over questions of the best token F1 against the gold answers, in percent.
    pub f1: f64,
    /// Number of questions (those without a prediction count as 0).
    pub total: usize,
}

/// Exact and F1 over a subset of questions (the v2 script's `make_eval_dict`).
#[derive(Clone, Debug, PartialEq)]
pub struct SubsetScores {
    /// Exact match, percent.
    pub exact: f64,
    /// Token F1, percent.
    pub f1: f64,
    /// Questions in the subset.
    pub total: usize,
}

/// Scores of the official v2.0 script, in percent; serialises with its key names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct V2Metrics {
    /// Exact match over all scored questions.
    pub exact: f64,
    /// Token F1 over all scored questions.
    pub f1: f64,
    /// Scored questions (those with a prediction).
    pub total: usize,
    /// Exact match over answerable questions.
    #[serde(rename = "HasAns_exact", skip_serializing_if = "Option::is_none")]
    pub has_ans_exact: Option<f64>,
    /// F1 over answerable questions.
    #[serde(rename = "HasAns_f1", skip_serializing_if = "Option::is_none")]
    pub has_ans_f1: Option<f64>,
    /// Number of answerable questions.
    #[serde(rename = "HasAns_total", skip_serializing_if = "Option::is_none")]
    pub has_ans_total: Option<usize>,
    /// Exact match over unanswerable questions.
    #[serde(rename = "NoAns_exact", skip_serializing_if = "Option::is_none")]
    pub no_ans_exact: Option<f64>,
    /// F1 over unanswerable questions.
    #[serde(rename = "NoAns_f1", skip_serializing_if = "Option::is_none")]
    pub no_ans_f1: Option<f64>,
    /// Number of unanswerable questions.
    #[serde(rename = "NoAns_total", skip_serializing_if = "Option::is_none")]
    pub no_ans_total: Option<usize>,
    /// Exact match with the best no-answer threshold (when no-answer probabilities are given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_exact: Option<f64>,
    /// That threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_exact_thresh: Option<f64>,
    /// F1 with the best no-answer threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_f1: Option<f64>,
    /// That threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_f1_thresh: Option<f64>,
}

/// The official figures for a dataset: v1.1 or v2.0 according to its format.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SquadMetrics {
    /// `evaluate-v1.1.py`.
    V1(V1Metrics),
    /// `evaluate-v2.0.py`.
    V2(V2Metrics),
}

impl SquadMetrics {
    /// Exact match in percent (`exact_match` for v1.1, `exact` for v2.0).
    pub fn exact_match(&self) -> f64 {
        match self {
            SquadMetrics::V1(m) => m.exact_match,
            SquadMetrics::V2(m) => m.exact,
        }
    }

    /// F1 in percent.
    pub fn f1(&self) -> f64 {
        match self {
            SquadMetrics::V1(m) => m.f1,
            SquadMetrics::V2(m) => m.f1,
        }
    }

    /// Questions counted.
    pub fn total(&self) -> usize {
        match self {
            SquadMetrics::V1(m) => m.total,
            SquadMetrics::V2(m) => m.total,
        }
    }
}

/// The v2 script's default `--na-prob-thresh`: a question counts as "no answer" only when its
/// no-answer probability exceeds this.
pub const DEFAULT_NA_PROB_THRESH: f64 = 1.0;

/// Scores `predictions` (question id → answer text, `""` for no answer) with the official script
/// for the dataset's format. `na_probs` (question id → no-answer probability) enables the v2
/// best-threshold search; it is ignored for v1.1 data.
pub fn evaluate(
    dataset: &SquadDataset,
    predictions: &HashMap<String, String>,
    na_probs: Option<&HashMap<String, f64>>,
) -> SquadMetrics {
    match dataset.format {
        SquadVersion::V1 => SquadMetrics::V1(evaluate_v1(&dataset.examples, predictions)),
        SquadVersion::V2 => SquadMetrics::V2(evaluate_v2(
            &dataset.examples,
            predictions,
            na_probs,
            DEFAULT_NA_PROB_THRESH,
        )),
    }
}

fn percent(sum: f64, total: usize) -> f64 {
    // The official scripts divide by zero on an empty set; report 0 instead.
    if total == 0 {
        0.0
    } else {
        100.0 * sum / total as f64
    }
}

/// `evaluate-v1.1.py`: per question the best exact match and F1 over its gold answers; questions
/// without a prediction score 0 but count in the total.
pub fn evaluate_v1(examples: &[SquadExample], predictions: &HashMap<String, String>) -> V1Metrics {
    let mut exact = 0.0;
    let mut f1 = 0.0;
    for example in examples {
        let Some(prediction) = predictions.get(&example.id) else {
            continue;
        };
        let golds = example.answers.iter().map(|a| a.text.as_str());
        if golds.clone().any(|g| exact_match(prediction, g)) {
            exact += 1.0;
        }
        f1 += golds.map(|g| f1_score(prediction, g)).fold(0.0, f64::max);
    }
    V1Metrics {
        exact_match: percent(exact, examples.len()),
        f1: percent(f1, examples.len()),
        total: examples.len(),
    }
}

/// `evaluate-v2.0.py`: gold answers that normalise to nothing are dropped and a question left
/// without any has the single gold `""`; questions without a prediction are left out. A question
/// is predicted "no answer" when its probability exceeds `na_prob_thresh` (missing
/// probabilities count as 0). With `na_probs`, also the best thresholds
/// (`find_all_best_thresh`); equal probabilities keep dataset order, as the script keeps the
/// order of a probability file written in dataset order.
pub fn evaluate_v2(
    examples: &[SquadExample],
    predictions: &HashMap<String, String>,
    na_probs: Option<&HashMap<String, f64>>,
    na_prob_thresh: f64,
) -> V2Metrics {
    let (ids, has_ans) = v2_question_ids(examples);
    let (order, raw) = v2_raw_scores(examples, predictions);
    let has_ans_ids: Vec<&str> = ids.iter().copied().filter(|id| has_ans[id]).collect();
    let no_ans_ids: Vec<&str> = ids.iter().copied().filter(|id| !has_ans[id]).collect();
    let na_prob = |id: &str| na_probs.and_then(|p| p.get(id)).copied().unwrap_or(0.0);
    let thresholded: HashMap<&str, (f64, f64)> = raw
        .iter()
        .map(|(&id, &scores)| {
            let scores = if na_prob(id) > na_prob_thresh {
                let correct = if has_ans[id] { 0.0 } else { 1.0 };
                (correct, correct)
            } else {
                scores
            };
            (id, scores)
        })
        .collect();
    let all = subset_scores(&order, &thresholded);
    let has = (!has_ans_ids.is_empty()).then(|| subset_scores(&has_ans_ids, &thresholded));
    let no = (!no_ans_ids.is_empty()).then(|| subset_scores(&no_ans_ids, &thresholded));
    let mut metrics = V2Metrics {
        exact: all.exact,
        f1: all.f1,
        total: all.total,
        has_ans_exact: has.as_ref().map(|s| s.exact),
        has_ans_f1: has.as_ref().map(|s| s.f1),
        has_ans_total: has.as_ref().map(|s| s.total),
        no_ans_exact: no.as_ref().map(|s| s.exact),
        no_ans_f1: no.as_ref().map(|s| s.f1),
        no_ans_total: no.as_ref().map(|s| s.total),
        best_exact: None,
        best_exact_thresh: None,
        best_f1: None,
        best_f1_thresh: None,
    };
    if let Some(na_probs) = na_probs {
        let search = ThresholdSearch::new(&ids, &has_ans, &raw, predictions, na_probs);
        let (best_exact, exact_thresh) = search.best(|s| s.0);
        let (best_f1, f1_thresh) = search.best(|s| s.1);
        metrics.best_exact = Some(best_exact);
        metrics.best_exact_thresh = Some(exact_thresh);
        metrics.best_f1 = Some(best_f1);
        metrics.best_f1_thresh = Some(f1_thresh);
    }
    metrics
}

/// The question ids in dataset order and whether each has an answer. The script keys everything
/// by question id: a repeated id keeps the place of its first occurrence and the values of its
/// last.
fn v2_question_ids(examples: &[SquadExample]) -> (Vec<&str>, HashMap<&str, bool>) {
    let mut ids: Vec<&str> = Vec::new();
    let mut has_ans: HashMap<&str, bool> = HashMap::new();
    for example in examples {
        if has_ans.insert(&example.id, example.has_answer()).is_none() {
            ids.push(&example.id);
        }
    }
    (ids, has_ans)
}

/// Per predicted question, the best (exact, F1) over its gold answers before any no-answer
/// threshold, with the scored ids in dataset order (keyed by id as in [`v2_question_ids`]).
fn v2_raw_scores<'a>(
    examples: &'a [SquadExample],
    predictions: &HashMap<String, String>,
) -> (Vec<&'a str>, HashMap<&'a str, (f64, f64)>) {
    let mut order: Vec<&str> = Vec::new();
    let mut raw: HashMap<&str, (f64, f64)> = HashMap::new();
    for example in examples {
        let id = example.id.as_str();
        let Some(prediction) = predictions.get(id) else {
            continue;
        };
        if raw
            .insert(id, v2_best_scores(prediction, example))
            .is_none()
        {
            order.push(id);
        }
    }
    (order, raw)
}

/// The best exact match and F1 of `prediction` over the example's gold answers that do not
/// normalise to nothing (the single gold `""` when none is left).
fn v2_best_scores(prediction: &str, example: &SquadExample) -> (f64, f64) {
    let mut golds: Vec<&str> = example
        .answers
        .iter()
        .map(|a| a.text.as_str())
        .filter(|t| !normalize_answer(t).is_empty())
        .collect();
    if golds.is_empty() {
        golds.push("");
    }
    let exact = golds
        .iter()
        .map(|g| if exact_match(prediction, g) { 1.0 } else { 0.0 })
        .fold(0.0, f64::max);
    let f1 = golds
        .iter()
        .map(|g| f1_score_v2(prediction, g))
        .fold(0.0, f64::max);
    (exact, f1)
}

/// Exact and F1 over the questions of `ids` that were scored (`make_eval_dict`).
fn subset_scores(ids: &[&str], scores: &HashMap<&str, (f64, f64)>) -> SubsetScores {
    let scored: Vec<&(f64, f64)> = ids.iter().filter_map(|id| scores.get(id)).collect();
    SubsetScores {
        exact: percent(scored.iter().map(|s| s.0).sum(), scored.len()),
        f1: percent(scored.iter().map(|s| s.1).sum(), scored.len()),
        total: scored.len(),
    }
}

/// The v2 script's `find_best_thresh`: the no-answer threshold that maximises a score, trying
/// each question's no-answer probability in increasing order.
struct ThresholdSearch<'a, 'p> {
    /// Questions with a no-answer probability, by increasing probability (dataset order among
    /// equal ones).
    by_prob: Vec<(&'a str, f64)>,
    has_ans: &'p HashMap<&'a str, bool>,
    raw: &'p HashMap<&'a str, (f64, f64)>,
    predictions: &'p HashMap<String, String>,
    /// Unanswerable questions: the score when every question is predicted "no answer".
    num_no_ans: usize,
}

impl<'a, 'p> ThresholdSearch<'a, 'p> {
    /// The search over the questions of `ids` that have a probability in `na_probs`.
    fn new(
        ids: &[&'a str],
        has_ans: &'p HashMap<&'a str, bool>,
        raw: &'p HashMap<&'a str, (f64, f64)>,
        predictions: &'p HashMap<String, String>,
        na_probs: &HashMap<String, f64>,
    ) -> Self {
        // Dataset order; the stable sort keeps it among equal probabilities.
        let mut by_prob: Vec<(&str, f64)> = ids
            .iter()
            .filter_map(|&id| na_probs.get(id).map(|&p| (id, p)))
            .collect();
        by_prob.sort_by(|a, b| a.1.total_cmp(&b.1));
        let num_no_ans = has_ans.values().filter(|&&h| !h).count();
        Self {
            by_prob,
            has_ans,
            raw,
            predictions,
            num_no_ans,
        }
    }

    /// The best score in percent of the scored questions (`pick` chooses exact or F1 from a
    /// question's raw scores) and the threshold that gives it.
    fn best(&self, pick: fn(&(f64, f64)) -> f64) -> (f64, f64) {
        let mut score = self.num_no_ans as f64;
        let mut best_score = score;
        let mut best_thresh = 0.0;
        for &(id, p) in &self.by_prob {
            let Some(s) = self.raw.get(id) else { continue };
            score += if self.has_ans[id] {
                pick(s)
            } else if self.predictions.get(id).is_some_and(|a| !a.is_empty()) {
                -1.0
            } else {
                0.0
            };
            if score > best_score {
                best_score = score;
                best_thresh = p;
            }
        }
        (percent(best_score, self.raw.len()), best_thresh)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::data::SquadAnswer;
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn normalisation_drops_case_punctuation_articles_and_extra_space() {
        assert_eq!(normalize_answer("The Quick, Brown fox!"), "quick brown fox");
        assert_eq!(normalize_answer("  an apple\ta day "), "apple day");
        // Articles only as whole words; punctuation goes first, so "A-team" is one word.
        assert_eq!(normalize_answer("theatre Anthem"), "theatre anthem");
        assert_eq!(normalize_answer("A-team"), "ateam");
        // `_` is in string.punctuation.
        assert_eq!(normalize_answer("the_end"), "theend");
        assert_eq!(normalize_answer("(the) 1990s"), "1990s");
        assert_eq!(normalize_answer("the"), "");
    }

    #[test]
    fn normalisation_of_unicode_text() {
        // Only ASCII punctuation is removed; non-ASCII letters are word characters for `\b`.
        assert_eq!(normalize_answer("« The Élan »"), "« élan »");
        assert_eq!(normalize_answer("theé a"), "theé");
        assert_eq!(normalize_answer("Zürich’s CAFÉ"), "zürich’s café");
        // Python's str.lower: final sigma, and İ → i + combining dot.
        assert_eq!(normalize_answer("ΟΔΟΣ"), "οδος");
        assert_eq!(normalize_answer("İ"), "i\u{307}");
        // str.split(): no-break space, and the separators U+001C..U+001F.
        assert_eq!(normalize_answer("b\u{a0}c\u{1f}d\u{3000}e"), "b c d e");
    }

    #[test]
    fn exact_match_compares_normalised_text() {
        assert!(exact_match("the Broncos", "Broncos."));
        assert!(!exact_match("Denver Broncos", "Broncos"));
    }

    #[test]
    fn f1_counts_shared_tokens_with_multiplicity() {
        // pred {cat, sat, on, mat}, gold {cat, on, mat}: P = 3/4, R = 1.
        assert!(close(
            f1_score("the cat sat on the mat", "a cat on a mat"),
            6.0 / 7.0
        ));
        // One shared "dog": P = 1/3, R = 1.
        assert!(close(f1_score("dog dog dog", "dog"), 0.5));
        assert!(close(f1_score("dog cat", "cat dog"), 1.0));
        assert_eq!(f1_score("red", "blue"), 0.0);
    }

    #[test]
    fn empty_answers_score_differently_in_v1_and_v2() {
        assert_eq!(f1_score("", ""), 0.0);
        assert_eq!(f1_score_v2("", ""), 1.0);
        assert_eq!(f1_score_v2("The", ""), 1.0);
        assert_eq!(f1_score_v2("London", ""), 0.0);
        assert_eq!(f1_score_v2("", "London"), 0.0);
    }

    fn example(id: &str, golds: &[&str]) -> SquadExample {
        let context: Arc<str> = golds.join(" ").into();
        let mut start = 0;
        let answers = golds
            .iter()
            .map(|g| {
                let a = SquadAnswer {
                    text: g.to_string(),
                    answer_start: start,
                };
                start += g.chars().count() + 1;
                a
            })
            .collect();
        SquadExample {
            id: id.into(),
            title: String::new(),
            context,
            question: format!("question {id}?"),
            answers,
            is_impossible: golds.is_empty(),
            article_index: 0,
            paragraph_index: 0,
        }
    }

    fn preds(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn v1_takes_the_best_gold_answer_and_counts_missing_predictions() {
        let examples = [
            example("q1", &["Denver Broncos", "the Broncos"]),
            example("q2", &["Denver Broncos", "Broncos team"]),
            example("q3", &["Santa Clara"]),
        ];
        // q1 matches its second gold exactly; q2: F1 2/3 with the first gold (P 1, R 1/2),
        // 0 with the second; q3 has no prediction.
        let m = evaluate_v1(&examples, &preds(&[("q1", "Broncos"), ("q2", "Denver")]));
        assert_eq!(m.total, 3);
        assert!(close(m.exact_match, 100.0 / 3.0), "{m:?}");
        assert!(close(m.f1, 100.0 * (1.0 + 2.0 / 3.0) / 3.0), "{m:?}");
        let json = serde_json::to_value(SquadMetrics::V1(m)).unwrap();
        assert!(json.get("exact_match").is_some() && json.get("f1").is_some());
    }

    fn v2_examples() -> Vec<SquadExample> {
        vec![
            example("h1", &["Paris"]),
            example("h2", &["blue whale"]),
            example("n1", &[]),
            example("n2", &[]),
        ]
    }

    fn v2_preds() -> HashMap<String, String> {
        preds(&[
            ("h1", "Paris"),
            ("h2", "whale"),
            ("n1", ""),
            ("n2", "London"),
        ])
    }

    #[test]
    fn v2_scores_no_answer_as_the_empty_string() {
        let m = evaluate_v2(&v2_examples(), &v2_preds(), None, DEFAULT_NA_PROB_THRESH);
        // Raw (exact, f1): h1 (1, 1), h2 (0, 2/3), n1 (1, 1), n2 (0, 0).
        assert_eq!(m.total, 4);
        assert!(close(m.exact, 50.0));
        assert!(close(m.f1, 100.0 * (8.0 / 3.0) / 4.0));
        assert!(close(m.has_ans_exact.unwrap(), 50.0));
        assert!(close(m.has_ans_f1.unwrap(), 100.0 * (5.0 / 3.0) / 2.0));
        assert_eq!(m.has_ans_total, Some(2));
        assert!(close(m.no_ans_exact.unwrap(), 50.0));
        assert!(close(m.no_ans_f1.unwrap(), 50.0));
        assert_eq!(m.no_ans_total, Some(2));
        assert_eq!(m.best_f1, None);
        let json = serde_json::to_value(&m).unwrap();
        for key in [
            "exact",
            "f1",
            "total",
            "HasAns_exact",
            "HasAns_f1",
            "NoAns_total",
        ] {
            assert!(json.get(key).is_some(), "{key} missing in {json}");
        }
        assert!(json.get("best_exact").is_none());
    }

    #[test]
    fn v2_gold_answers_that_normalise_to_nothing_become_no_answer() {
        let examples = [example("q", &["The", "..."])];
        let m = evaluate_v2(&examples, &preds(&[("q", "")]), None, 1.0);
        assert!(close(m.exact, 100.0) && close(m.f1, 100.0));
        // Still an answerable question for the breakdown: it has answers.
        assert_eq!(m.has_ans_total, Some(1));
        assert_eq!(m.no_ans_total, None);
    }

    fn probs(pairs: &[(&str, f64)]) -> HashMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn v2_threshold_turns_confident_no_answers_into_empty_predictions() {
        let na = probs(&[("h1", 0.1), ("h2", 0.2), ("n2", 0.3), ("n1", 0.9)]);
        // Above 0.25: n2 and n1 become "no answer", both correct.
        let m = evaluate_v2(&v2_examples(), &v2_preds(), Some(&na), 0.25);
        assert!(close(m.exact, 75.0));
        assert!(close(m.f1, 100.0 * (1.0 + 2.0 / 3.0 + 1.0 + 1.0) / 4.0));
    }

    #[test]
    fn v2_best_threshold_search() {
        let na = probs(&[("h1", 0.1), ("h2", 0.2), ("n2", 0.3), ("n1", 0.9)]);
        let m = evaluate_v2(&v2_examples(), &v2_preds(), Some(&na), 1.0);
        // Start at 2 (all no-answers right). Ascending probability:
        // exact: h1 +1 → 3 (best, 0.1), h2 +0, n2 −1 (answered wrongly), n1 +0 (empty).
        // f1:    h1 +1 → 3, h2 +2/3 → 3.67 (best, 0.2), n2 −1, n1 +0.
        assert!(close(m.best_exact.unwrap(), 75.0));
        assert_eq!(m.best_exact_thresh, Some(0.1));
        assert!(close(m.best_f1.unwrap(), 100.0 * (11.0 / 3.0) / 4.0));
        assert_eq!(m.best_f1_thresh, Some(0.2));
        // The wrongly answered no-answer question first: no threshold beats answering nothing
        // above 0, so the best stays the initial score at threshold 0.
        let worse = probs(&[("n2", 0.1), ("n1", 0.2), ("h1", 0.3), ("h2", 0.4)]);
        let m = evaluate_v2(&v2_examples(), &v2_preds(), Some(&worse), 1.0);
        // exact: n2 −1 → 1, n1 0, h1 +1 → 2, h2 0: never above 2.
        assert!(close(m.best_exact.unwrap(), 50.0));
        assert_eq!(m.best_exact_thresh, Some(0.0));
    }
}
