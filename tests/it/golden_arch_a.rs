//! Golden parity for DistilBERT, RoBERTa, XLM-RoBERTa and ELECTRA checkpoints: windows,
//! logits and answers equal to transformers'.

use crate::common;

#[test]
fn distilbert_cased_matches_transformers() {
    common::check_fixture("distilbert-cased");
}

#[test]
fn roberta_matches_transformers() {
    common::check_fixture("roberta");
}

#[test]
fn xlm_roberta_matches_transformers() {
    common::check_fixture("xlm-roberta");
}

#[test]
fn electra_matches_transformers() {
    common::check_fixture("electra");
}

/// The training path (`train = true`: differentiable kernels) with dropout set to 0 must give
/// transformers' loss and the gradient of every parameter (`train-step/grads.safetensors`).
fn check_train_step_gradients(arch: &str) {
    use bertqa::models::{self, ModelInput};
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    #[derive(serde::Deserialize)]
    struct Batch {
        input_ids: Vec<Vec<u32>>,
        #[serde(default)]
        token_type_ids: Option<Vec<Vec<u32>>>,
        attention_mask: Vec<Vec<u32>>,
    }
    #[derive(serde::Deserialize)]
    struct Step {
        batch: Batch,
        start_positions: Vec<u32>,
        end_positions: Vec<u32>,
        loss: f32,
    }

    let dir = common::fixture(arch);
    let step: Step = serde_json::from_str(
        &std::fs::read_to_string(dir.join("train-step/step.json")).expect("step.json"),
    )
    .expect("step.json format");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
            .expect("config.json format");
    // The reference step ran in eval mode: no dropout.
    for (key, value) in config.as_object_mut().expect("config object") {
        if key.contains("dropout") && value.is_number() {
            *value = serde_json::json!(0.0);
        }
    }

    // Every parameter becomes a variable; the model is built from their tensors, so the
    // gradients of the loss are found under the variables' ids.
    let device = Device::Cpu;
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &device)
        .expect("model.safetensors");
    let vars: HashMap<String, Var> = weights
        .iter()
        .map(|(name, t)| (name.clone(), Var::from_tensor(t).expect("var")))
        .collect();
    let tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(name, v)| (name.clone(), v.as_tensor().clone()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
    let (model, _) = models::build(&config, vb).expect("build model");

    let rows = |v: &Vec<Vec<u32>>| Tensor::new(v.clone(), &device).expect("tensor");
    let input_ids = rows(&step.batch.input_ids);
    let input = ModelInput {
        token_type_ids: match &step.batch.token_type_ids {
            Some(types) => rows(types),
            None => input_ids.zeros_like().expect("zeros"),
        },
        attention_mask: rows(&step.batch.attention_mask),
        input_ids,
    };
    let logits = model.forward(&input, true).expect("forward");
    let ce = |l: &Tensor, t: &[u32]| {
        let targets = Tensor::new(t, &device).expect("targets");
        candle_nn::loss::cross_entropy(l, &targets).expect("cross entropy")
    };
    let loss = ((ce(&logits.start, &step.start_positions) + ce(&logits.end, &step.end_positions))
        .expect("sum")
        / 2.0)
        .expect("mean");
    let got_loss = loss.to_scalar::<f32>().expect("scalar");
    assert!(
        (got_loss - step.loss).abs() < 1e-4,
        "{arch}: loss {got_loss}, expected {}",
        step.loss
    );

    let grads = loss.backward().expect("backward");
    let expected =
        candle_core::safetensors::load(dir.join("train-step/grads.safetensors"), &device)
            .expect("grads.safetensors");
    let mut errors = Vec::new();
    for (name, want) in &expected {
        let Some(var) = vars.get(name) else {
            errors.push(format!("{name}: no such parameter"));
            continue;
        };
        let Some(got) = grads.get(var.as_tensor()) else {
            errors.push(format!("{name}: no gradient"));
            continue;
        };
        let diff = (got - want)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("compare");
        let scale = want
            .abs()
            .and_then(|a| a.max_all()?.to_scalar::<f32>())
            .expect("scale");
        if diff > 1e-4 * scale.max(1.0) {
            errors.push(format!(
                "{name}: gradient differs by {diff} (max |grad| {scale})"
            ));
        }
    }
    assert_eq!(vars.len(), expected.len(), "{arch}: parameter count");
    assert!(errors.is_empty(), "{arch}:\n{}", errors.join("\n"));
}

#[test]
fn distilbert_cased_training_gradients_match_transformers() {
    check_train_step_gradients("distilbert-cased");
}

#[test]
fn roberta_training_gradients_match_transformers() {
    check_train_step_gradients("roberta");
}

/// Checkpoints published without tokenizer.json (only vocab.json + merges.txt) get the same
/// byte-level BPE tokenizer, so the same windows and answers.
#[test]
fn roberta_from_vocab_and_merges_matches_transformers() {
    let src = common::fixture("roberta");
    let dir = common::TempDir::new("roberta-bpe");
    for name in [
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    let qa = common::load_pipeline(&dir);
    assert!(qa.files().tokenizer_json.is_none() && qa.files().bpe_files.is_some());
    let golden = common::load_golden(&src.join("golden.json"));
    let errors: Vec<String> = golden
        .cases
        .iter()
        .flat_map(|c| common::check_case(&qa, c))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
