//! Checks and times bertqa on a device (a GPU) without cargo: the golden files and the training
//! step fixtures of `../shared`, and forward / training-step timings, from one binary that can
//! be carried to a machine with a GPU (see bench/gpu.sh).
//!
//! ```text
//! device_check golden     [--device cuda] [--dtype f32] [--shared DIR] [--minilm]
//! device_check train-step [--device cuda] [--shared DIR]
//! device_check forward MODEL_DIR [--device cuda] [--dtype f32] [--seq 384] [--batch 1] [--iters 20]
//! device_check train MODEL_DIR   [--device cuda] [--dtype f32] [--seq 384] [--batch 16] [--steps 5]
//! ```
//!
//! `golden`: every `fixtures/*/golden.json` on the reference models on that device: in f32 every
//! window's logits within 1e-3 of transformers' and the answers identical (text, offsets, score
//! within 1e-3); in bf16/f16 the largest logit difference and how many answers are identical
//! are reported, not judged. `--minilm` adds the 894 answers of the MiniLM checkpoint.
//! `train-step`: the fixtures' training step (dropout off) on that device: loss, every
//! gradient and every parameter after one AdamW step against PyTorch's.
//! Both end with a line `N passed, M failed` and exit 1 on a failure.
//! `forward` and `train` print one JSON object of timings (the device synchronised by reading
//! the results back).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use bertqa::checkpoint::{self, WeightsFile};
use bertqa::train::data::TrainBatch;
use bertqa::train::model::TrainableModel;
use bertqa::train::optim::{AdamW, AdamWConfig};
use bertqa::train::zero_dropout;
use bertqa::{
    Answer, DeviceChoice, EngineChoice, FloatType, LoadOptions, QaParams, QaPipeline, QaRequest,
    Tokens,
};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Failure = Box<dyn std::error::Error>;

/// Command-line options shared by the subcommands.
struct Options {
    device: DeviceChoice,
    dtype: FloatType,
    shared: PathBuf,
    minilm: bool,
    seq: usize,
    batch: usize,
    iters: usize,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, Failure> {
    let mut o = Options {
        device: DeviceChoice::Cuda(0),
        dtype: FloatType::F32,
        shared: std::env::var_os("BERTQA_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("../shared")),
        minilm: false,
        seq: 384,
        batch: 0,
        iters: 0,
        positional: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--device" => o.device = value()?.parse()?,
            "--dtype" => o.dtype = value()?.parse()?,
            "--shared" => o.shared = PathBuf::from(value()?),
            "--minilm" => o.minilm = true,
            "--seq" => o.seq = value()?.parse()?,
            "--batch" => o.batch = value()?.parse()?,
            "--iters" | "--steps" => o.iters = value()?.parse()?,
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}").into()),
            _ => o.positional.push(arg.clone()),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!("usage: device_check golden|train-step|forward|train ... (see the source)");
        return ExitCode::from(2);
    };
    let outcome = parse(&args[1..]).and_then(|o| match command.as_str() {
        "golden" => golden(&o),
        "train-step" => train_steps(&o),
        "forward" => forward(&o).map(|()| true),
        "train" => train(&o).map(|()| true),
        other => Err(format!("unknown command {other}").into()),
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

// ------------------------------------------------------------------ golden files

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    question: String,
    context: String,
    #[serde(default)]
    params: QaParams,
    expected: Vec<Expected>,
    #[serde(default)]
    features: Vec<Feature>,
}

#[derive(Deserialize)]
struct Expected {
    score: f64,
    start: usize,
    end: usize,
    answer: String,
}

#[derive(Deserialize)]
struct Feature {
    start_logits: Vec<f32>,
    end_logits: Vec<f32>,
}

/// Largest difference of the logits, and the mismatches of windows and answers, of one case.
fn check_case(qa: &QaPipeline, case: &Case, tol: f64) -> Result<(f32, Vec<String>), Failure> {
    let request = QaRequest {
        question: case.question.clone(),
        context: case.context.clone(),
        params: case.params.clone(),
    };
    let mut errors = Vec::new();
    let mut worst = 0f32;
    if !case.features.is_empty() {
        let prepared = qa.prepare(&request)?;
        if prepared.windows.len() != case.features.len() {
            errors.push(format!(
                "{}: {} windows, transformers {}",
                case.id,
                prepared.windows.len(),
                case.features.len()
            ));
        } else {
            let windows: Vec<_> = prepared.windows.iter().collect();
            for ((s, e), f) in qa.run_windows(&windows)?.iter().zip(&case.features) {
                for (got, want) in [(s, &f.start_logits), (e, &f.end_logits)] {
                    for (a, b) in got.iter().zip(want) {
                        worst = worst.max((a - b).abs());
                    }
                }
            }
        }
    }
    let answers = qa.answer_one(&request)?;
    errors.extend(answer_mismatches(&case.id, &answers, &case.expected, tol));
    Ok((worst, errors))
}

fn answer_mismatches(id: &str, got: &[Answer], want: &[Expected], tol: f64) -> Vec<String> {
    let mut errors = Vec::new();
    if got.len() != want.len() {
        errors.push(format!(
            "{id}: {} answers, transformers {}",
            got.len(),
            want.len()
        ));
    }
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        if (g.start, g.end, g.answer.as_str()) != (w.start, w.end, w.answer.as_str()) {
            errors.push(format!(
                "{id} answer {k}: {:?} [{}, {}), transformers {:?} [{}, {})",
                g.answer, g.start, g.end, w.answer, w.start, w.end
            ));
        } else if (f64::from(g.score) - w.score).abs() > tol {
            errors.push(format!(
                "{id} answer {k}: score {}, transformers {}",
                g.score, w.score
            ));
        }
    }
    errors
}

fn load(dir: &Path, o: &Options, device: &Device) -> Result<QaPipeline, Failure> {
    let options = LoadOptions {
        device: device.clone(),
        dtype: o.dtype,
        engine: EngineChoice::Reference,
        batch_size: o.batch.max(8),
        ..LoadOptions::default()
    };
    Ok(QaPipeline::load(&dir.to_string_lossy(), &options)?)
}

fn read_golden(path: &Path) -> Result<Golden, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

fn golden(o: &Options) -> Result<bool, Failure> {
    let device = o.device.open()?;
    let exact = o.dtype == FloatType::F32;
    let tol = 1e-3;
    let fixtures = o.shared.join("fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .map_err(|e| format!("{}: {e}", fixtures.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.join("golden.json").is_file())
        .collect();
    dirs.sort();
    let (mut passed, mut failed) = (0, 0);
    for dir in &dirs {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let qa = load(dir, o, &device)?;
        let golden = read_golden(&dir.join("golden.json"))?;
        let (mut worst, mut errors) = (0f32, Vec::new());
        for case in &golden.cases {
            let (w, e) = check_case(&qa, case, tol)?;
            worst = worst.max(w);
            errors.extend(e);
        }
        let ok = !exact || (errors.is_empty() && f64::from(worst) <= tol);
        println!(
            "{} {name} ({} on {}, {}): {} cases, largest logit difference {worst:.2e}, {} answer mismatches",
            if ok { "ok  " } else { "FAIL" },
            o.dtype,
            o.device,
            if qa.is_fast() { "fast engine" } else { "reference models" },
            golden.cases.len(),
            errors.len(),
        );
        for e in errors.iter().take(5) {
            println!("       {e}");
        }
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    if o.minilm {
        let dir = o.shared.join("models/minilm-xquad-qa");
        let qa = load(&dir, o, &device)?;
        let golden = read_golden(&dir.join("golden-train.json"))?;
        let requests: Vec<QaRequest> = golden
            .cases
            .iter()
            .map(|c| QaRequest {
                question: c.question.clone(),
                context: c.context.clone(),
                params: c.params.clone(),
            })
            .collect();
        let started = Instant::now();
        let answers = qa.answer(&requests)?;
        let seconds = started.elapsed().as_secs_f64();
        let identical = golden
            .cases
            .iter()
            .zip(&answers)
            .filter(|(c, a)| answer_mismatches(&c.id, a, &c.expected, tol).is_empty())
            .count();
        let ok = !exact || identical == golden.cases.len();
        println!(
            "{} minilm-xquad-qa ({} on {}): {identical}/{} questions answered as transformers ({:.1} questions/s)",
            if ok { "ok  " } else { "FAIL" },
            o.dtype,
            o.device,
            golden.cases.len(),
            golden.cases.len() as f64 / seconds,
        );
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

// ------------------------------------------------------------------ training step

#[derive(Deserialize)]
struct Step {
    batch: StepBatch,
    start_positions: Vec<u32>,
    end_positions: Vec<u32>,
    loss: f64,
    optimizer: StepOptimizer,
}

#[derive(Deserialize)]
struct StepBatch {
    input_ids: Vec<Vec<u32>>,
    token_type_ids: Option<Vec<Vec<u32>>>,
    attention_mask: Vec<Vec<u32>>,
}

#[derive(Deserialize)]
struct StepOptimizer {
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
}

fn norm(t: &Tensor) -> Result<f64, Failure> {
    Ok(f64::from(t.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt())
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64, Failure> {
    let b = b.to_device(a.device())?;
    Ok(f64::from(
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?,
    ))
}

/// The problems of one fixture's training step on `device` (empty: as PyTorch's).
fn train_step_errors(dir: &Path, device: &Device) -> Result<Vec<String>, Failure> {
    let ts = dir.join("train-step");
    let step: Step = serde_json::from_str(&std::fs::read_to_string(ts.join("step.json"))?)?;
    let mut config = checkpoint::read_json(&dir.join("config.json"))?;
    zero_dropout(&mut config);
    let weights = WeightsFile::Safetensors(dir.join("model.safetensors"));
    let vb = checkpoint::open_weights(&weights, DType::F32, device)?;
    let model = TrainableModel::new(&config, vb, 0, device)?;
    let types = step.batch.token_type_ids.clone().unwrap_or_else(|| {
        let rows = step.batch.input_ids.iter();
        rows.map(|r| vec![0; r.len()]).collect()
    });
    let batch = TrainBatch::from_rows(
        &step.batch.input_ids,
        &types,
        &step.batch.attention_mask,
        &step.start_positions,
        &step.end_positions,
        device,
    )?;
    let (loss, _) = model.loss(&batch)?;
    let grads = model.backward(&loss)?;
    let loss = f64::from(loss.to_scalar::<f32>()?);
    let mut errors = Vec::new();
    if (loss - step.loss).abs() > 1e-5 {
        errors.push(format!("loss {loss}, PyTorch {}", step.loss));
    }
    let cpu = Device::Cpu;
    let reference = candle_core::safetensors::load(ts.join("grads.safetensors"), &cpu)?;
    let after = candle_core::safetensors::load(ts.join("after_step.safetensors"), &cpu)?;
    let mut global = 0f64;
    for g in reference.values() {
        global += norm(g)?.powi(2);
    }
    let noise_floor = 1e-6 * global.sqrt();
    // Gradients that are zero in exact arithmetic are rounding noise on both sides, and AdamW
    // turns noise into steps of ±lr (see tests/it/train_parity.rs).
    let mut noise = Vec::new();
    for (p, g) in model.params().iter().zip(&grads) {
        let (Some(g), Some(want)) = (g, reference.get(&p.name)) else {
            errors.push(format!("{}: no gradient", p.name));
            continue;
        };
        let scale = norm(want)?;
        if scale < noise_floor {
            noise.push(p.name.clone());
        } else if max_diff(g, want)? > 1e-4 * scale {
            errors.push(format!(
                "{}: gradient differs by {:.2e} (norm {scale:.2e})",
                p.name,
                max_diff(g, want)?
            ));
        }
    }
    let o = &step.optimizer;
    let config = AdamWConfig {
        beta1: o.betas[0],
        beta2: o.betas[1],
        eps: o.eps,
        weight_decay: o.weight_decay,
    };
    let mut optimizer = AdamW::new(
        model.params().iter().map(|p| (p.var.clone(), p.decay)),
        config,
    )?;
    optimizer.step(&grads, o.lr)?;
    for p in model.params() {
        let Some(want) = after.get(&p.name) else {
            continue;
        };
        let limit = if noise.contains(&p.name) {
            2.0 * o.lr + 1e-5
        } else {
            1e-5
        };
        let diff = max_diff(p.var.as_tensor(), want)?;
        if diff > limit {
            errors.push(format!(
                "{}: after one AdamW step differs by {diff:.2e}",
                p.name
            ));
        }
    }
    Ok(errors)
}

fn train_steps(o: &Options) -> Result<bool, Failure> {
    let device = o.device.open()?;
    let (mut passed, mut failed) = (0, 0);
    for arch in ["bert-uncased", "distilbert-cased", "roberta"] {
        let dir = o.shared.join("fixtures").join(arch);
        let errors = train_step_errors(&dir, &device)?;
        println!(
            "{} {arch} training step on {}: loss, gradients and one AdamW step {}",
            if errors.is_empty() { "ok  " } else { "FAIL" },
            o.device,
            if errors.is_empty() {
                "as PyTorch's"
            } else {
                "differ"
            }
        );
        for e in errors.iter().take(8) {
            println!("       {e}");
        }
        if errors.is_empty() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

// ------------------------------------------------------------------ timings

/// Token ids of `batch` full windows of `seq` tokens, as bench/reference.py draws them (a fixed
/// pattern: the same for every engine).
fn windows(batch: usize, seq: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            (0..seq)
                .map(|i| 1000 + ((b * seq + i) as u32 * 7919) % 20000)
                .collect()
        })
        .collect()
}

fn forward(o: &Options) -> Result<(), Failure> {
    let model = o
        .positional
        .first()
        .ok_or("forward needs a model directory")?;
    let device = o.device.open()?;
    let (batch, iters) = (o.batch.max(1), if o.iters == 0 { 20 } else { o.iters });
    let options = LoadOptions {
        device: device.clone(),
        dtype: o.dtype,
        ..LoadOptions::default()
    };
    let qa = QaPipeline::load(model, &options)?;
    let ids = windows(batch, o.seq);
    let types = vec![0u32; o.seq];
    let tokens: Vec<Tokens> = ids
        .iter()
        .map(|ids| Tokens {
            input_ids: ids,
            token_type_ids: &types,
        })
        .collect();
    // Two untimed calls: kernels load and the allocator warms up on the first.
    qa.run_tokens(&tokens)?;
    qa.run_tokens(&tokens)?;
    let started = Instant::now();
    for _ in 0..iters {
        qa.run_tokens(&tokens)?;
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0 / iters as f64;
    let report = serde_json::json!({
        "model": model, "device": o.device.to_string(), "dtype": o.dtype.to_string(),
        "engine": if qa.is_fast() { "fast" } else { "reference" },
        "seq": o.seq, "batch": batch, "iters": iters,
        "ms_per_batch": ms, "ms_per_sequence": ms / batch as f64,
    });
    println!("{report}");
    Ok(())
}

fn train(o: &Options) -> Result<(), Failure> {
    let model_dir = o
        .positional
        .first()
        .ok_or("train needs a model directory")?;
    let device = o.device.open()?;
    o.dtype.check_device(&device)?;
    let (b, s) = (if o.batch == 0 { 16 } else { o.batch }, o.seq);
    let steps = if o.iters == 0 { 5 } else { o.iters };
    let files = checkpoint::locate(model_dir, &Default::default())?;
    let config = checkpoint::read_json(&files.config)?;
    let vb = checkpoint::open_weights(&files.weights, DType::F32, &device)?;
    let mut model = TrainableModel::new(&config, vb, 0, &device)?;
    model.set_compute_dtype(o.dtype.dtype())?;
    let mut optimizer = AdamW::new(
        model.params().iter().map(|p| (p.var.clone(), p.decay)),
        AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
    )?;
    let ids = windows(b, s);
    // Question, then context, as in reference.py's training step.
    let types: Vec<Vec<u32>> = (0..b)
        .map(|_| (0..s).map(|i| u32::from(i >= s / 4)).collect())
        .collect();
    let mask = vec![vec![1u32; s]; b];
    let starts: Vec<u32> = (0..b)
        .map(|i| (s / 4 + (i * 37) % (s / 2)) as u32)
        .collect();
    let ends: Vec<u32> = starts.iter().map(|&x| x + 5).collect();
    let batch = TrainBatch::from_rows(&ids, &types, &mask, &starts, &ends, &device)?;
    bertqa::nn::seed_dropout(0);
    let mut step = || -> Result<[f64; 3], Failure> {
        let t0 = Instant::now();
        let (loss, _) = model.loss(&batch)?;
        loss.to_scalar::<f32>()?; // waits for the forward pass
        let t1 = Instant::now();
        let mut grads = model.backward(&loss)?;
        device.synchronize()?;
        let t2 = Instant::now();
        bertqa::train::optim::clip_grad_norm(&mut grads, 1.0)?;
        optimizer.step(&grads, 1e-4)?;
        device.synchronize()?;
        let t3 = Instant::now();
        Ok([
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
        ])
    };
    step()?;
    step()?;
    let mut sums = [0f64; 3];
    for _ in 0..steps {
        for (sum, t) in sums.iter_mut().zip(step()?) {
            *sum += t;
        }
    }
    let [forward_s, backward_s, optimizer_s] = sums.map(|t| t / steps as f64);
    let step_s = forward_s + backward_s + optimizer_s;
    let report = serde_json::json!({
        "model": model_dir, "device": o.device.to_string(), "dtype": o.dtype.to_string(),
        "batch_size": b, "max_seq_len": s, "timed_steps": steps,
        "forward_s": forward_s, "backward_s": backward_s, "optimizer_s": optimizer_s,
        "step_s": step_s, "examples_per_s": b as f64 / step_s,
    });
    println!("{report}");
    Ok(())
}
