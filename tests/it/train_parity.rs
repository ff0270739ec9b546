//! One training step against PyTorch: loss, every parameter's gradient, and every parameter after
//! one AdamW step, from `<fixture>/train-step/` (made with transformers, dropout off).

use crate::common;

use std::collections::HashMap;

use bertqa::checkpoint::{self, WeightsFile};
use bertqa::train::data::TrainBatch;
use bertqa::train::model::TrainableModel;
use bertqa::train::optim::{AdamW, AdamWConfig};
use bertqa::train::zero_dropout;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

#[derive(Deserialize)]
struct Step {
    batch: Batch,
    start_positions: Vec<u32>,
    end_positions: Vec<u32>,
    loss: f64,
    start_logits: Vec<Vec<f32>>,
    end_logits: Vec<Vec<f32>>,
    optimizer: Optimizer,
}

#[derive(Deserialize)]
struct Batch {
    input_ids: Vec<Vec<u32>>,
    token_type_ids: Option<Vec<Vec<u32>>>,
    attention_mask: Vec<Vec<u32>>,
}

#[derive(Deserialize)]
struct Optimizer {
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
}

fn norm(t: &Tensor) -> f64 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt() as f64
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

struct StepResult {
    step: Step,
    model: TrainableModel,
    loss: f64,
    logits: (Vec<Vec<f32>>, Vec<Vec<f32>>),
    grads: Vec<Option<Tensor>>,
    reference_grads: HashMap<String, Tensor>,
    after_step: HashMap<String, Tensor>,
}

fn run_step(arch: &str) -> StepResult {
    let dir = common::fixture(arch);
    let ts = dir.join("train-step");
    let step: Step =
        serde_json::from_str(&std::fs::read_to_string(ts.join("step.json")).unwrap()).unwrap();
    let dev = Device::Cpu;
    let mut config = checkpoint::read_json(&dir.join("config.json")).unwrap();
    zero_dropout(&mut config);
    let vb = checkpoint::open_weights(
        &WeightsFile::Safetensors(dir.join("model.safetensors")),
        DType::F32,
        &dev,
    )
    .unwrap();
    let model = TrainableModel::new(&config, vb, 0, &dev).unwrap();
    assert!(
        model.initialised().is_empty(),
        "{arch}: the fixture has a QA head, nothing should be initialised"
    );
    let types = step.batch.token_type_ids.clone().unwrap_or_else(|| {
        step.batch
            .input_ids
            .iter()
            .map(|r| vec![0; r.len()])
            .collect()
    });
    let batch = TrainBatch::from_rows(
        &step.batch.input_ids,
        &types,
        &step.batch.attention_mask,
        &step.start_positions,
        &step.end_positions,
        &dev,
    )
    .unwrap();
    let (loss, logits) = model.loss(&batch).unwrap();
    let grads = model.backward(&loss).unwrap();
    let reference_grads =
        candle_core::safetensors::load(ts.join("grads.safetensors"), &dev).unwrap();
    let after_step =
        candle_core::safetensors::load(ts.join("after_step.safetensors"), &dev).unwrap();
    StepResult {
        loss: loss.to_scalar::<f32>().unwrap() as f64,
        logits: (
            logits.start.to_vec2().unwrap(),
            logits.end.to_vec2().unwrap(),
        ),
        step,
        model,
        grads,
        reference_grads,
        after_step,
    }
}

fn check_train_step(arch: &str) {
    let r = run_step(arch);
    let mut errors = Vec::new();
    if (r.loss - r.step.loss).abs() > 1e-5 {
        errors.push(format!("loss {} expected {}", r.loss, r.step.loss));
    }
    for (name, got, want) in [
        ("start", &r.logits.0, &r.step.start_logits),
        ("end", &r.logits.1, &r.step.end_logits),
    ] {
        let worst = got
            .iter()
            .flatten()
            .zip(want.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        if worst > 1e-4 {
            errors.push(format!("{name} logits differ by up to {worst}"));
        }
    }

    // Same parameter names as transformers, every one with a gradient close to PyTorch's.
    let mut ours: Vec<&str> = r.model.params().iter().map(|p| p.name.as_str()).collect();
    let mut theirs: Vec<&str> = r.reference_grads.keys().map(String::as_str).collect();
    ours.sort();
    theirs.sort();
    assert_eq!(
        ours, theirs,
        "{arch}: parameter names differ from transformers'"
    );
    // Some gradients are zero in exact arithmetic (a bias added to every attention score or to
    // every logit leaves the softmax unchanged): key biases, `qa_outputs.bias`, the last
    // LayerNorm's bias. Both sides then hold rounding noise (~1e-7), and AdamW turns noise into
    // steps of ±lr. Those are compared as noise: gradients against the global norm, and the
    // step against its largest possible size.
    let global = r
        .reference_grads
        .values()
        .map(|g| norm(g).powi(2))
        .sum::<f64>()
        .sqrt();
    let noise_floor = 1e-6 * global;
    let mut noise_only = std::collections::HashSet::new();
    for (p, g) in r.model.params().iter().zip(&r.grads) {
        let want = &r.reference_grads[&p.name];
        let Some(g) = g else {
            errors.push(format!("{}: no gradient", p.name));
            continue;
        };
        let diff = max_abs_diff(g, want);
        let scale = norm(want);
        if scale < noise_floor {
            noise_only.insert(p.name.clone());
            if norm(g) >= noise_floor {
                errors.push(format!(
                    "{}: gradient norm {:e}, expected (numerically) zero",
                    p.name,
                    norm(g)
                ));
            }
        } else if diff > 1e-4 * scale {
            errors.push(format!(
                "{}: gradient differs by {diff:e} (norm {scale:e})",
                p.name
            ));
        }
    }
    assert!(
        noise_only.len() <= 6,
        "{arch}: too many parameters with a zero gradient: {noise_only:?}"
    );

    // One AdamW step with the fixture's settings.
    let o = &r.step.optimizer;
    let mut opt = AdamW::new(
        r.model.params().iter().map(|p| (p.var.clone(), p.decay)),
        AdamWConfig {
            beta1: o.betas[0],
            beta2: o.betas[1],
            eps: o.eps,
            weight_decay: o.weight_decay,
        },
    )
    .unwrap();
    opt.step(&r.grads, o.lr).unwrap();
    for p in r.model.params() {
        let diff = max_abs_diff(p.var.as_tensor(), &r.after_step[&p.name]);
        let limit = if noise_only.contains(&p.name) {
            2.0 * o.lr + 1e-5
        } else {
            1e-5
        };
        if diff > limit {
            errors.push(format!("{}: after one step differs by {diff:e}", p.name));
        }
    }
    assert!(
        errors.is_empty(),
        "{arch}: {} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

fn check_every_param_gets_a_gradient(arch: &str) {
    let r = run_step(arch);
    let missing: Vec<&str> = r
        .model
        .params()
        .iter()
        .zip(&r.grads)
        .filter(|(_, g)| g.is_none())
        .map(|(p, _)| p.name.as_str())
        .collect();
    assert!(missing.is_empty(), "{arch}: no gradient for {missing:?}");
    assert_eq!(r.model.params().len(), r.reference_grads.len());
}

#[test]
fn bert_uncased_train_step_matches_pytorch() {
    check_train_step("bert-uncased");
}

#[test]
fn bert_uncased_every_parameter_gets_a_gradient() {
    check_every_param_gets_a_gradient("bert-uncased");
}

#[test]
fn distilbert_cased_train_step_matches_pytorch() {
    check_train_step("distilbert-cased");
}

#[test]
fn distilbert_cased_every_parameter_gets_a_gradient() {
    check_every_param_gets_a_gradient("distilbert-cased");
}

#[test]
fn roberta_train_step_matches_pytorch() {
    check_train_step("roberta");
}

#[test]
fn roberta_every_parameter_gets_a_gradient() {
    check_every_param_gets_a_gradient("roberta");
}
