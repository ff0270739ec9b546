//! Golden parity for ALBERT and MobileBERT checkpoints: windows, logits and answers equal to
//! transformers'.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::common;

#[test]
fn albert_matches_transformers() {
    common::check_fixture("albert");
}

#[test]
fn mobilebert_matches_transformers() {
    common::check_fixture("mobilebert");
}

/// Largest absolute difference between two tensors of the same shape.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensor difference")
}

/// The training forward pass (differentiable kernels) of `arch`'s fixture: with dropout off it
/// must give the inference logits on a padded multi-window batch, every weight must receive a
/// finite gradient, and with the checkpoint's dropout the logits must change.
fn check_training_path(arch: &str) {
    let dir = common::fixture(arch);
    let qa = common::load_pipeline(&dir);
    let golden = common::load_golden(&dir.join("golden.json"));
    let case = golden
        .cases
        .iter()
        .max_by_key(|c| c.features.len())
        .expect("golden cases");
    let prepared = qa.prepare(&common::request(case)).expect("prepare");
    assert!(prepared.windows.len() > 1, "{arch}: want a padded batch");
    let tokens: Vec<_> = prepared
        .windows
        .iter()
        .map(|w| bertqa::Tokens {
            input_ids: w.input_ids(),
            token_type_ids: w.token_type_ids(),
        })
        .collect();

    let config_text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&config_text).expect("config json");
    let weights = bertqa::checkpoint::open_weights(&qa.files().weights, DType::F32, &Device::Cpu)
        .expect("weights");
    let (reference, _) = bertqa::models::build(&config, weights).expect("reference model");
    let engine =
        bertqa::models::ReferenceEngine::new(reference, qa.tokenizer().pad_token_id(), Device::Cpu);
    let input = engine.padded_input(&tokens).expect("batch");
    let eval = engine
        .model()
        .forward(&input, false)
        .expect("inference forward");
    let build = |config: &serde_json::Value| {
        // Every checkpoint tensor becomes a trainable variable under its Hugging Face name.
        let varmap = VarMap::new();
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
            .expect("model.safetensors");
        {
            let mut vars = varmap.data().lock().expect("varmap lock");
            for (name, tensor) in tensors {
                vars.insert(name, Var::from_tensor(&tensor).expect("variable"));
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let (model, _) = bertqa::models::build(config, vb).expect("build");
        (model, varmap)
    };

    let (with_dropout, _) = build(&config);
    let dropped = with_dropout
        .forward(&input, true)
        .expect("training forward");
    assert!(
        max_abs_diff(&dropped.start, &eval.start) > 1e-3,
        "{arch}: dropout had no effect in training"
    );

    for key in ["hidden_dropout_prob", "attention_probs_dropout_prob"] {
        config[key] = serde_json::json!(0.0);
    }
    let (model, varmap) = build(&config);
    let train = model.forward(&input, true).expect("training forward");
    for (name, got, want) in [
        ("start", &train.start, &eval.start),
        ("end", &train.end, &eval.end),
    ] {
        let diff = max_abs_diff(got, want);
        assert!(diff < 1e-4, "{arch}: {name} logits differ by {diff}");
    }

    let loss = (train.start.sqr().unwrap().sum_all().unwrap()
        + train.end.sqr().unwrap().sum_all().unwrap())
    .expect("loss");
    let grads = loss.backward().expect("backward pass");
    let vars = varmap.data().lock().expect("varmap lock");
    assert!(!vars.is_empty());
    for (name, var) in vars.iter() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{arch}: no gradient for {name}"));
        let finite = grad
            .flatten_all()
            .and_then(|g| g.to_vec1::<f32>())
            .expect("gradient values")
            .iter()
            .all(|v| v.is_finite());
        assert!(finite, "{arch}: non-finite gradient for {name}");
    }
}

#[test]
fn albert_training_forward_is_differentiable_and_matches_inference() {
    check_training_path("albert");
}

#[test]
fn mobilebert_training_forward_is_differentiable_and_matches_inference() {
    check_training_path("mobilebert");
}
