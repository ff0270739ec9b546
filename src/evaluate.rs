//! Answering every question of a SQuAD dataset and scoring the answers with the official
//! metric ([`crate::squad`]): what `bertqa eval` reports and what training prints after each
//! epoch, computed by the same code so that the two agree.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::params::QaParams;
use crate::pipeline::{Prepared, QaPipeline, QaRequest};
use crate::squad::{self, SquadDataset, SquadExample, SquadMetrics, SquadVersion};

/// Questions tokenized and answered per round: enough windows to batch well, few enough to keep
/// memory flat and progress moving.
const QUESTIONS_PER_ROUND: usize = 64;

/// The pipeline's answer to one question.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The best answer's text (`""` when "no answer" wins on v2 data).
    pub text: String,
    /// The pipeline's null score, `p_start(CLS)·p_end(CLS)`, smallest over windows (the
    /// no-answer probability of SQuAD v2's threshold search).
    pub no_answer_prob: f32,
}

/// `params` as a dataset is answered: on v2.0 data "no answer" competes with the spans.
pub fn dataset_params(dataset: &SquadDataset, params: &QaParams) -> QaParams {
    QaParams {
        handle_impossible_answer: (dataset.format == SquadVersion::V2).then_some(true),
        ..params.clone()
    }
}

/// Answers every question of `dataset` with `params` (see [`dataset_params`]), in dataset
/// order. `progress` is called with the number of questions answered so far, from worker
/// threads.
pub fn answer_dataset(
    qa: &QaPipeline,
    dataset: &SquadDataset,
    params: &QaParams,
    progress: impl Fn(usize) + Sync,
) -> Result<Vec<Prediction>> {
    let mut predictions = Vec::with_capacity(dataset.len());
    for round in dataset.examples.chunks(QUESTIONS_PER_ROUND) {
        // Tokenization and span decoding are cheap next to the model (under 1% of a round),
        // but run serially they would keep all workers but one waiting.
        let prepared = round
            .par_iter()
            .map(|example| prepare(qa, example, params))
            .collect::<Result<Vec<Prepared>>>()?;
        let round_windows: usize = prepared.iter().map(|p| p.windows.len()).sum();
        let done_before = predictions.len();
        let windows_done = AtomicUsize::new(0);
        let logits = qa.run_prepared(&prepared, |n| {
            let done = windows_done.fetch_add(n, Ordering::Relaxed) + n;
            progress(done_before + round.len() * done / round_windows.max(1));
        })?;
        // An indexed parallel extend appends in order.
        predictions.par_extend(prepared.par_iter().zip(&logits).map(|(p, l)| {
            let decoded = p.answers(l);
            Prediction {
                text: decoded
                    .answers
                    .into_iter()
                    .next()
                    .map_or(String::new(), |a| a.answer),
                no_answer_prob: decoded.null_score,
            }
        }));
        progress(predictions.len());
    }
    Ok(predictions)
}

fn prepare(qa: &QaPipeline, example: &SquadExample, params: &QaParams) -> Result<Prepared> {
    let request = QaRequest {
        question: example.question.clone(),
        context: example.context.to_string(),
        params: params.clone(),
    };
    qa.prepare(&request).map_err(|e| Error::Data {
        location: format!(
            "data[{}], paragraphs[{}], question id {:?}",
            example.article_index, example.paragraph_index, example.id
        ),
        message: e.to_string(),
    })
}

/// Scores predictions (in dataset order) with the official script of the dataset's version;
/// on v2.0 data the no-answer probabilities drive the best-threshold search.
pub fn score(dataset: &SquadDataset, predictions: &[Prediction]) -> SquadMetrics {
    let texts: HashMap<String, String> = dataset
        .examples
        .iter()
        .zip(predictions)
        .map(|(e, p)| (e.id.clone(), p.text.clone()))
        .collect();
    let probs: HashMap<String, f64> = dataset
        .examples
        .iter()
        .zip(predictions)
        .map(|(e, p)| (e.id.clone(), f64::from(p.no_answer_prob)))
        .collect();
    squad::evaluate(dataset, &texts, Some(&probs))
}
