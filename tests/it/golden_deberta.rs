//! Golden parity for DeBERTa-v3 checkpoints (`model_type: deberta-v2`): windows, logits and
//! answers equal to transformers', and a training forward that agrees with inference and
//! back-propagates through the relative-position terms.

use crate::common;

use std::collections::HashMap;

use bertqa::models::{self, ModelInput, QaModel};
use bertqa::WindowLogits;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

#[test]
fn deberta_v3_matches_transformers() {
    common::check_fixture("deberta-v3");
}

/// The fixture's config with dropout off, so that the training forward is deterministic.
fn config_without_dropout() -> serde_json::Value {
    let path = common::fixture("deberta-v3").join("config.json");
    let text = std::fs::read_to_string(&path).expect("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("config.json is JSON");
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    config
}

fn build(config: &serde_json::Value, weights: &HashMap<String, Tensor>) -> Box<dyn QaModel> {
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
    models::build(config, vb).expect("build deberta-v2").0
}

/// Two windows of unequal length from the golden file, padded into one batch, with their
/// expected logits.
fn golden_batch() -> (ModelInput, Vec<WindowLogits>) {
    let golden = common::load_golden(&common::fixture("deberta-v3").join("golden.json"));
    let case = golden
        .cases
        .iter()
        .find(|c| c.id == "window-impossible")
        .expect("case window-impossible");
    let first = &case.features[0];
    let last = case.features.last().expect("windows");
    assert!(
        last.input_ids.len() < first.input_ids.len(),
        "needs padding"
    );
    let len = first.input_ids.len();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for f in [first, last] {
        let n = f.input_ids.len();
        ids.extend(
            f.input_ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, len - n)),
        );
        mask.extend(std::iter::repeat_n(1u32, n).chain(std::iter::repeat_n(0, len - n)));
    }
    let t = |v: Vec<u32>| Tensor::from_vec(v, (2, len), &Device::Cpu).expect("tensor");
    let input = ModelInput {
        input_ids: t(ids),
        token_type_ids: t(vec![0; 2 * len]),
        attention_mask: t(mask),
    };
    let expected = [first, last]
        .iter()
        .map(|f| (f.start_logits.clone(), f.end_logits.clone()))
        .collect();
    (input, expected)
}

fn loss(model: &dyn QaModel, input: &ModelInput) -> Tensor {
    let logits = model.forward(input, true).expect("train forward");
    let start = logits.start.sqr().and_then(|x| x.mean_all()).expect("loss");
    let end = logits.end.sqr().and_then(|x| x.mean_all()).expect("loss");
    (start + end).expect("loss")
}

#[test]
fn deberta_v3_training_forward_matches_golden_logits() {
    let config = config_without_dropout();
    let path = common::fixture("deberta-v3").join("model.safetensors");
    let weights = candle_core::safetensors::load(&path, &Device::Cpu).expect("weights");
    let model = build(&config, &weights);
    let (input, expected) = golden_batch();
    for train in [false, true] {
        let logits = model.forward(&input, train).expect("forward");
        let start: Vec<Vec<f32>> = logits.start.to_vec2().expect("start");
        let end: Vec<Vec<f32>> = logits.end.to_vec2().expect("end");
        for (row, (want_start, want_end)) in expected.iter().enumerate() {
            let n = want_start.len();
            for (got, want) in [(&start[row][..n], want_start), (&end[row][..n], want_end)] {
                let worst = got
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-4,
                    "train={train} row {row}: logits off by {worst}"
                );
            }
        }
    }
}

#[test]
fn deberta_v3_gradients_reach_relative_embeddings() {
    let config = config_without_dropout();
    let path = common::fixture("deberta-v3").join("model.safetensors");
    let loaded = candle_core::safetensors::load(&path, &Device::Cpu).expect("weights");
    let vars: HashMap<String, Var> = loaded
        .iter()
        .map(|(k, t)| (k.clone(), Var::from_tensor(t).expect("var")))
        .collect();
    let weights: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let (input, _) = golden_batch();
    let model = build(&config, &weights);
    let grads = loss(model.as_ref(), &input).backward().expect("backward");

    // Tensors that only the relative-position terms use must receive a gradient.
    for name in [
        "deberta.encoder.rel_embeddings.weight",
        "deberta.encoder.LayerNorm.weight",
        "deberta.encoder.layer.0.attention.self.query_proj.weight",
        "deberta.embeddings.word_embeddings.weight",
    ] {
        let grad = grads.get(vars[name].as_tensor()).expect(name);
        let norm = grad
            .sqr()
            .and_then(|g| g.sum_all())
            .and_then(|g| g.to_scalar::<f32>());
        let norm = norm.expect("norm");
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name}: gradient norm {norm}"
        );
    }

    // The relative-embedding gradient is the true one: a central difference of the loss along
    // it equals its squared norm.
    let name = "deberta.encoder.rel_embeddings.weight";
    let table = vars[name].as_tensor();
    let grad = grads.get(table).expect("rel grad").clone();
    let norm2 = grad
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let eps = 1e-2 / norm2.sqrt();
    let at = |sign: f64| {
        let mut shifted = weights.clone();
        let moved = (table + (&grad * (sign * eps)).unwrap()).unwrap();
        shifted.insert(name.to_string(), moved.detach());
        let model = build(&config, &shifted);
        loss(model.as_ref(), &input).to_scalar::<f32>().unwrap() as f64
    };
    let numeric = (at(1.0) - at(-1.0)) / (2.0 * eps);
    let rel = (numeric - norm2).abs() / norm2;
    assert!(
        rel < 2e-2,
        "directional derivative {numeric} vs |g|² {norm2}"
    );
}
