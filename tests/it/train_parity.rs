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

/// Which implementation of the training ops runs: the CPU's single ops, or the ops composed from
/// candle's differentiable ops that a GPU runs (forced onto the CPU here).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ops {
    Single,
    Composed,
}

/// Runs `f` with `ops`.
fn with_ops<T>(ops: Ops, f: impl FnOnce() -> T) -> T {
    match ops {
        Ops::Single => f(),
        Ops::Composed => bertqa::nn::with_composed_ops(f),
    }
}

fn run_step(arch: &str) -> StepResult {
    run_step_with(arch, Ops::Single)
}

fn run_step_with(arch: &str, ops: Ops) -> StepResult {
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
    let (loss, logits) = with_ops(ops, || model.loss(&batch).unwrap());
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
    check_train_step_with(arch, Ops::Single);
}

fn check_train_step_with(arch: &str, ops: Ops) {
    let r = run_step_with(arch, ops);
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

// The ops a GPU runs (composed from candle's differentiable ops), on the CPU: the same step as
// PyTorch's, and the same loss and gradients as the CPU's single ops, dropout included.

#[test]
fn bert_uncased_train_step_matches_pytorch_with_composed_ops() {
    check_train_step_with("bert-uncased", Ops::Composed);
}

#[test]
fn distilbert_cased_train_step_matches_pytorch_with_composed_ops() {
    check_train_step_with("distilbert-cased", Ops::Composed);
}

#[test]
fn roberta_train_step_matches_pytorch_with_composed_ops() {
    check_train_step_with("roberta", Ops::Composed);
}

/// Rows of a training batch: ids, token types, attention mask, start and end positions.
type Rows = (
    Vec<Vec<u32>>,
    Vec<Vec<u32>>,
    Vec<Vec<u32>>,
    Vec<u32>,
    Vec<u32>,
);

/// The batch of the fixture's training step where it has one; otherwise two copies of its first
/// golden window, the second with its last quarter padded, with answer spans inside both.
fn training_rows(dir: &std::path::Path) -> Rows {
    let step_file = dir.join("train-step/step.json");
    if step_file.exists() {
        let step: Step =
            serde_json::from_str(&std::fs::read_to_string(step_file).unwrap()).unwrap();
        let types = step.batch.token_type_ids.clone().unwrap_or_else(|| {
            step.batch
                .input_ids
                .iter()
                .map(|r| vec![0; r.len()])
                .collect()
        });
        return (
            step.batch.input_ids,
            types,
            step.batch.attention_mask,
            step.start_positions,
            step.end_positions,
        );
    }
    let golden = common::load_golden(&dir.join("golden.json"));
    let feature = golden
        .cases
        .iter()
        .flat_map(|c| &c.features)
        .next()
        .expect("a golden window");
    let n = feature.input_ids.len();
    assert!(n >= 8, "{}: golden window of {n} tokens", dir.display());
    let types = feature.token_type_ids.clone().unwrap_or_else(|| vec![0; n]);
    let padded: Vec<u32> = (0..n).map(|i| u32::from(i < n - n / 4)).collect();
    (
        vec![feature.input_ids.clone(); 2],
        vec![types; 2],
        vec![vec![1; n], padded],
        vec![1, 2],
        vec![3, (n / 2) as u32],
    )
}

/// Loss and gradients of one training-mode pass with the config's own dropout, the masks drawn
/// from `seed`.
fn dropout_step(arch: &str, ops: Ops, seed: u64) -> (f64, Vec<(String, Tensor)>) {
    let dir = common::fixture(arch);
    let mut config = checkpoint::read_json(&dir.join("config.json")).unwrap();
    // Dropout well above the config's 0.1, so that masks matter.
    if let Some(map) = config.as_object_mut() {
        for (key, value) in map.iter_mut() {
            if key.contains("dropout") && value.is_number() {
                *value = serde_json::json!(0.3);
            }
        }
    }
    let dev = Device::Cpu;
    let files = checkpoint::locate(&dir.to_string_lossy(), &Default::default()).unwrap();
    let vb = checkpoint::open_weights(&files.weights, DType::F32, &dev).unwrap();
    let model = TrainableModel::new(&config, vb, 0, &dev).unwrap();
    let (ids, types, mask, starts, ends) = training_rows(&dir);
    let batch = TrainBatch::from_rows(&ids, &types, &mask, &starts, &ends, &dev).unwrap();
    bertqa::nn::seed_dropout(seed);
    let (loss, _) = with_ops(ops, || model.loss(&batch).unwrap());
    let grads = model.backward(&loss).unwrap();
    let named = model
        .params()
        .iter()
        .zip(grads)
        .filter_map(|(p, g)| Some((p.name.clone(), g?)))
        .collect();
    (loss.to_scalar::<f32>().unwrap() as f64, named)
}

fn check_composed_ops_with_dropout(arch: &str) {
    let (single_loss, single) = dropout_step(arch, Ops::Single, 11);
    let (composed_loss, composed) = dropout_step(arch, Ops::Composed, 11);
    let (other_seed_loss, _) = dropout_step(arch, Ops::Composed, 12);
    assert!(
        (single_loss - composed_loss).abs() < 1e-5,
        "{arch}: loss {single_loss} with the single ops, {composed_loss} composed"
    );
    assert!(
        (single_loss - other_seed_loss).abs() > 1e-4,
        "{arch}: another dropout seed gave the same loss {other_seed_loss}: masks are not drawn"
    );
    let names =
        |grads: &[(String, Tensor)]| grads.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&single),
        names(&composed),
        "{arch}: the same parameters get gradients"
    );
    assert!(single.len() > 10, "{arch}: {} gradients", single.len());
    let mut errors = Vec::new();
    for ((name, a), (_, b)) in single.iter().zip(&composed) {
        // 1e-4, relative to the gradient's norm where that is above 1 (MobileBERT's reach ~100,
        // where f32 rounding alone moves elements by ~1e-4).
        let (diff, scale) = (max_abs_diff(a, b), norm(a));
        if diff > 1e-4 * scale.max(1.0) {
            errors.push(format!(
                "{name}: gradients differ by {diff:e} (norm {scale:e})"
            ));
        }
    }
    assert!(errors.is_empty(), "{arch}:\n{}", errors.join("\n"));
}

#[test]
fn bert_uncased_composed_ops_give_the_single_ops_gradients_with_dropout() {
    check_composed_ops_with_dropout("bert-uncased");
}

#[test]
fn distilbert_cased_composed_ops_give_the_single_ops_gradients_with_dropout() {
    check_composed_ops_with_dropout("distilbert-cased");
}

#[test]
fn roberta_composed_ops_give_the_single_ops_gradients_with_dropout() {
    check_composed_ops_with_dropout("roberta");
}

// Architectures without a PyTorch training step: the composed ops against the single ops, whose
// gradients the fixtures above check.

#[test]
fn albert_composed_ops_give_the_single_ops_gradients_with_dropout() {
    check_composed_ops_with_dropout("albert");
}

#[test]
fn deberta_v3_composed_ops_give_the_single_ops_gradients_with_dropout() {
    check_composed_ops_with_dropout("deberta-v3");
}

#[test]
fn electra_composed_ops_give_the_single_ops_gradients_with_dropout() {
    check_composed_ops_with_dropout("electra");
}

#[test]
fn mobilebert_composed_ops_give_the_single_ops_gradients_with_dropout() {
    check_composed_ops_with_dropout("mobilebert");
}

#[test]
fn xlm_roberta_composed_ops_give_the_single_ops_gradients_with_dropout() {
    check_composed_ops_with_dropout("xlm-roberta");
}

/// bf16 mixed precision (the GPU's `--dtype bf16`), composed ops on the CPU: the loss within
/// bf16's precision of PyTorch's f32 loss, every gradient pointing the same way, parameters and
/// gradients f32.
#[test]
fn bert_uncased_bf16_mixed_precision_step_follows_pytorch() {
    let dir = common::fixture("bert-uncased");
    let step: Step =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train-step/step.json")).unwrap())
            .unwrap();
    let dev = Device::Cpu;
    let mut config = checkpoint::read_json(&dir.join("config.json")).unwrap();
    zero_dropout(&mut config);
    let vb = checkpoint::open_weights(
        &WeightsFile::Safetensors(dir.join("model.safetensors")),
        DType::F32,
        &dev,
    )
    .unwrap();
    let mut model = TrainableModel::new(&config, vb, 0, &dev).unwrap();
    assert!(
        model.set_compute_dtype(DType::F16).is_err(),
        "f16 needs loss scaling"
    );
    model.set_compute_dtype(DType::BF16).unwrap();
    let types = step.batch.token_type_ids.clone().unwrap();
    let batch = TrainBatch::from_rows(
        &step.batch.input_ids,
        &types,
        &step.batch.attention_mask,
        &step.start_positions,
        &step.end_positions,
        &dev,
    )
    .unwrap();
    let (loss_tensor, logits) = bertqa::nn::with_composed_ops(|| model.loss(&batch).unwrap());
    assert_eq!(loss_tensor.dtype(), DType::F32);
    assert_eq!(logits.start.dtype(), DType::F32);
    let loss = loss_tensor.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (loss - step.loss).abs() < 2e-2 * step.loss.abs().max(1.0),
        "bf16 loss {loss}, PyTorch f32 {}",
        step.loss
    );
    let grads = model.backward(&loss_tensor).unwrap();
    let reference =
        candle_core::safetensors::load(dir.join("train-step/grads.safetensors"), &dev).unwrap();
    let global = reference
        .values()
        .map(|g| norm(g).powi(2))
        .sum::<f64>()
        .sqrt();
    for (p, g) in model.params().iter().zip(&grads) {
        let g = g.as_ref().expect("gradient");
        assert_eq!(g.dtype(), DType::F32, "{}", p.name);
        assert_eq!(p.var.as_tensor().dtype(), DType::F32, "{}", p.name);
        let want = &reference[&p.name];
        if norm(want) < 1e-2 * global {
            continue; // too small for bf16's 8 bits to say much
        }
        let dot = (g * want)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let cosine = dot / (norm(g) * norm(want));
        assert!(
            cosine > 0.99,
            "{}: cosine {cosine} to PyTorch's gradient",
            p.name
        );
    }
}
