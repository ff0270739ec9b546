//! Training runs end to end on the tiny BERT fixture: a run stopped and resumed ends with the
//! same parameters as one run straight through; the output loads in the pipeline.

use crate::common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use bertqa::train::{self, StepReport, TrainObserver, TrainOptions};
use bertqa::{LoadOptions, QaPipeline, QaRequest};
use candle_core::Device;

fn temp_dir(name: &str) -> common::TempDir {
    common::TempDir::new(name)
}

/// A small SQuAD v1.1 file: contexts long enough for several windows at max_seq_len 48.
fn write_squad(dir: &Path) -> PathBuf {
    let ctx1 = "The Normans were the people who in the 10th and 11th centuries gave their name to \
                Normandy, a region in France. They were descended from Norse raiders and pirates \
                from Denmark, Iceland and Norway who, under their leader Rollo, agreed to swear \
                fealty to King Charles III of West Francia.";
    let ctx2 =
        "The Amazon rainforest covers much of the Amazon basin of South America. This basin \
                encompasses seven million square kilometres, of which five and a half million \
                square kilometres are covered by the rainforest.";
    let qa = |id: &str, q: &str, ctx: &str, ans: &str| {
        let start = ctx.find(ans).unwrap();
        let start = ctx[..start].chars().count();
        serde_json::json!({"id": id, "question": q,
            "answers": [{"text": ans, "answer_start": start}]})
    };
    let data = serde_json::json!({"version": "1.1", "data": [
        {"title": "Normans", "paragraphs": [{"context": ctx1, "qas": [
            qa("n1", "In what country is Normandy located?", ctx1, "France"),
            qa("n2", "Who was the Norse leader?", ctx1, "Rollo"),
            qa("n3", "When did the Normans give their name to Normandy?", ctx1, "10th and 11th centuries"),
        ]}]},
        {"title": "Amazon", "paragraphs": [{"context": ctx2, "qas": [
            qa("a1", "How many square kilometres does the basin cover?", ctx2, "seven million square kilometres"),
            qa("a2", "Where is the Amazon basin?", ctx2, "South America"),
        ]}]}
    ]});
    let path = dir.join("train.json");
    std::fs::write(&path, serde_json::to_string(&data).unwrap()).unwrap();
    path
}

fn options(data: &Path, output: &Path) -> TrainOptions {
    TrainOptions {
        model: common::fixture("bert-uncased")
            .to_string_lossy()
            .into_owned(),
        train_data: data.to_path_buf(),
        output: output.to_path_buf(),
        epochs: 3.0,
        learning_rate: 1e-3,
        batch_size: 2,
        max_seq_len: 48,
        doc_stride: 16,
        warmup_ratio: 0.2,
        weight_decay: 0.01,
        seed: 7,
        device: Device::Cpu,
        ..TrainOptions::default()
    }
}

/// Stops the run after `at` steps.
struct StopAt {
    at: usize,
    steps: Vec<usize>,
}

impl TrainObserver for StopAt {
    fn step(&mut self, r: &StepReport) -> ControlFlow<()> {
        self.steps.push(r.step);
        if r.step == self.at {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

fn weights(dir: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn stopped_and_resumed_run_equals_straight_run() {
    let root = temp_dir("resume");
    let data = write_squad(&root);
    let (straight, split) = (root.join("straight"), root.join("split"));

    let full = train::train(&options(&data, &straight), &mut train::Silent).unwrap();
    // 5 questions → more windows than questions; several epochs of several steps.
    assert!(full.global_step >= 6, "only {} steps", full.global_step);
    assert_eq!(full.epochs.len(), 3);

    // Stop in the middle of the second epoch, after a checkpoint.
    let stop_at = full.global_step / 2 + 1;
    let mut opts = options(&data, &split);
    opts.save_every = Some(stop_at);
    let mut stopper = StopAt {
        at: stop_at,
        steps: Vec::new(),
    };
    let first = train::train(&opts, &mut stopper).unwrap();
    assert!(first.stopped);
    assert_eq!(first.global_step, stop_at);
    assert!(split.join(format!("checkpoint-{stop_at}")).is_dir());
    assert!(!split.join("model.safetensors").exists());

    // Resuming without --resume is refused; with it the run continues where it stopped.
    assert!(train::train(&opts, &mut train::Silent).is_err());
    opts.resume = true;
    let mut rest = StopAt {
        at: usize::MAX,
        steps: Vec::new(),
    };
    // On a fresh thread, as in a new process: nothing carries over but what was saved.
    let (second, rest) = std::thread::spawn(move || {
        let second = train::train(&opts, &mut rest).unwrap();
        (second, rest)
    })
    .join()
    .unwrap();
    assert_eq!(rest.steps.first(), Some(&(stop_at + 1)));
    assert_eq!(second.global_step, full.global_step);

    let (a, b) = (weights(&straight), weights(&split));
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
        assert!(va == vb, "{name} differs after resuming");
    }

    // Training changed the weights, and kept transformers' names.
    let base = weights(&common::fixture("bert-uncased"));
    let mut names: Vec<_> = a.keys().cloned().collect();
    let mut base_names: Vec<_> = base.keys().cloned().collect();
    names.sort();
    base_names.sort();
    assert_eq!(names, base_names);
    let moved = |n: &str| {
        let x: Vec<f32> = a[n].flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = base[n].flatten_all().unwrap().to_vec1().unwrap();
        x != y
    };
    assert!(
        moved("qa_outputs.weight") && moved("bert.encoder.layer.0.attention.self.query.weight")
    );

    // A different seed gives a different model (shuffling and dropout depend on it).
    let mut other = options(&data, &root.join("other-seed"));
    other.seed = 8;
    other.max_steps = Some(full.global_step);
    other.epochs = 3.0;
    train::train(&other, &mut train::Silent).unwrap();
    let c = weights(&root.join("other-seed"));
    let vc: Vec<f32> = c["qa_outputs.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let va: Vec<f32> = a["qa_outputs.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_ne!(va, vc);

    // The output is a checkpoint the pipeline loads.
    let qa = QaPipeline::load(straight.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let answers = qa
        .answer_one(&QaRequest::new(
            "Who was the Norse leader?",
            "Their leader was Rollo.",
        ))
        .unwrap();
    assert_eq!(answers.len(), 1);
    let config = bertqa::checkpoint::read_json(&straight.join("config.json")).unwrap();
    assert_eq!(config["architectures"][0], "BertForQuestionAnswering");
}

#[test]
fn resume_with_other_settings_is_refused() {
    let root = temp_dir("resume-settings");
    let data = write_squad(&root);
    let out = root.join("out");
    let mut opts = options(&data, &out);
    opts.max_steps = Some(2);
    train::train(&opts, &mut train::Silent).unwrap();
    opts.resume = true;
    opts.batch_size = 3;
    let err = train::train(&opts, &mut train::Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch_size"), "{err}");
}

#[test]
fn base_model_without_prefix_or_head_gets_a_new_head() {
    use bertqa::checkpoint::{open_weights, read_json, WeightsFile};
    use bertqa::train::model::TrainableModel;
    let root = temp_dir("base-model");
    let fixture = common::fixture("bert-uncased");
    // A `BertModel` checkpoint: no `bert.` prefix, no QA head.
    let base: std::collections::HashMap<String, candle_core::Tensor> = weights(&fixture)
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("bert.").map(|k| (k.to_string(), v)))
        .collect();
    let path = root.join("model.safetensors");
    candle_core::safetensors::save(&base, &path).unwrap();
    let config = read_json(&fixture.join("config.json")).unwrap();
    let dev = Device::Cpu;
    let load = |seed| {
        let vb = open_weights(
            &WeightsFile::Safetensors(path.clone()),
            candle_core::DType::F32,
            &dev,
        )
        .unwrap();
        TrainableModel::new(&config, vb, seed, &dev).unwrap()
    };
    let model = load(3);
    assert_eq!(
        model.initialised(),
        ["qa_outputs.weight", "qa_outputs.bias"]
    );
    let t = model.tensors();
    assert!(t.contains_key("bert.embeddings.word_embeddings.weight"));
    let w: Vec<f32> = t["qa_outputs.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = t["qa_outputs.bias"].to_vec1().unwrap();
    assert_eq!(b, [0.0, 0.0]);
    // Normal with std = initializer_range (0.2 in this config): 64 draws.
    let mean = w.iter().sum::<f32>() / w.len() as f32;
    let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
    assert!((0.12..0.28).contains(&std), "std {std}");
    // Seeded: the same seed gives the same head, another seed another head.
    let again: Vec<f32> = load(3).tensors()["qa_outputs.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let other: Vec<f32> = load(4).tensors()["qa_outputs.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(w, again);
    assert_ne!(w, other);
}
