//! Exact match and F1 between predicted and gold answers, as the official SQuAD scripts compute
//! them (v2 rules: an empty prediction matches only an unanswerable question).

use super::data::SquadQuestion;
use crate::error::Result;
use crate::pipeline::{QaParams, QaPipeline, QaRequest};

/// SQuAD's answer normalisation: lower case, no ASCII punctuation, no articles, single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1.0 when the normalised strings are equal.
pub fn exact_match(prediction: &str, gold: &str) -> f64 {
    f64::from(normalize_answer(prediction) == normalize_answer(gold))
}

/// Token-overlap F1 of the normalised strings.
pub fn f1(prediction: &str, gold: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(gold);
    let pt: Vec<&str> = p.split_whitespace().collect();
    let gt: Vec<&str> = g.split_whitespace().collect();
    if pt.is_empty() || gt.is_empty() {
        return f64::from(pt == gt);
    }
    let mut counts = std::collections::HashMap::new();
    for t in &gt {
        *counts.entry(*t).or_insert(0i64) += 1;
    }
    let mut common = 0;
    for t in &pt {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / pt.len() as f64;
    let recall = common as f64 / gt.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// EM and F1 (percent) of one pipeline over a data set: best answer per question, each metric
/// the maximum over gold answers (`[""]` for unanswerable questions).
pub fn evaluate(
    qa: &QaPipeline,
    questions: &[SquadQuestion],
    params: &QaParams,
) -> Result<(f64, f64)> {
    if questions.is_empty() {
        return Ok((0.0, 0.0));
    }
    let (mut em, mut f) = (0.0, 0.0);
    for chunk in questions.chunks(32) {
        let requests: Vec<QaRequest> = chunk
            .iter()
            .map(|q| QaRequest {
                question: q.question.clone(),
                context: q.context.clone(),
                params: params.clone(),
            })
            .collect();
        let answers = qa.answer(&requests)?;
        for (q, a) in chunk.iter().zip(answers) {
            let prediction = a.first().map(|a| a.answer.as_str()).unwrap_or("");
            let golds: Vec<&str> = if q.answers.is_empty() {
                vec![""]
            } else {
                q.answers.iter().map(|a| a.text.as_str()).collect()
            };
            em += golds
                .iter()
                .map(|g| exact_match(prediction, g))
                .fold(0.0, f64::max);
            f += golds.iter().map(|g| f1(prediction, g)).fold(0.0, f64::max);
        }
    }
    let n = questions.len() as f64;
    Ok((100.0 * em / n, 100.0 * f / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_metric_by_hand() {
        assert_eq!(normalize_answer("The  Big, Cat!"), "big cat");
        assert_eq!(exact_match("the cat", "Cat."), 1.0);
        assert_eq!(exact_match("a dog", "cat"), 0.0);
        // pred {big, black, cat} vs gold {black, cat}: P = 2/3, R = 1 → F1 = 0.8.
        assert!((f1("big black cat", "the black cat") - 0.8).abs() < 1e-12);
        assert_eq!(f1("", ""), 1.0);
        assert_eq!(f1("cat", ""), 0.0);
    }
}
