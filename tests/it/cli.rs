//! The `bertqa` binary end to end: outputs against golden files, and clear errors (exit 2,
//! never a panic) for bad input.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

fn bertqa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bertqa"))
        .args(args)
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .expect("run bertqa")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_user_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn bert_dir() -> String {
    common::fixture("bert-uncased").display().to_string()
}

fn temp_dir(name: &str) -> common::TempDir {
    common::TempDir::new(&format!("cli-{name}"))
}

/// A copy of the bert-uncased fixture (without golden files) to break on purpose.
fn fixture_copy(name: &str) -> common::TempDir {
    let dir = temp_dir(name);
    for entry in std::fs::read_dir(common::fixture("bert-uncased")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().unwrap() != "golden.json" {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn seed_case(id: &str) -> common::Case {
    let golden = common::load_golden(&common::fixture("bert-uncased").join("golden.json"));
    golden.cases.into_iter().find(|c| c.id == id).unwrap()
}

/// `ask --json` on the seed case with five answers and "no answer" allowed, plus `extra` flags.
fn ask_seed_case_json(extra: &[&str]) {
    let case = seed_case("seed-top5-impossible");
    let bert = bert_dir();
    let mut args = vec![
        "ask",
        "--model",
        &bert,
        "--question",
        &case.question,
        "--context",
        &case.context,
        "--top-k",
        "5",
        "--handle-impossible-answer",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = bertqa(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let answers: Vec<bertqa::Answer> = serde_json::from_slice(&out.stdout).expect("one JSON array");
    let errors = common::compare_answers(&case.id, &answers, &case.expected);
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn ask_json_gives_the_golden_answers() {
    ask_seed_case_json(&[]);
}

#[test]
fn ask_human_output_marks_the_answer() {
    let case = seed_case("seed-2");
    let out = bertqa(&[
        "ask",
        "--model",
        &bert_dir(),
        "-q",
        &case.question,
        "-c",
        &case.context,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let best = &case.expected[0];
    assert!(text.contains(&format!("[{}]", best.answer)), "{text}");
    assert!(
        text.contains(&format!("chars {}..{}", best.start, best.end)),
        "{text}"
    );
}

#[test]
fn ask_jsonl_answers_every_line_with_its_params() {
    let golden = common::load_golden(&common::fixture("bert-uncased").join("golden.json"));
    let dir = temp_dir("jsonl");
    let input = dir.join("in.jsonl");
    let mut lines = String::new();
    for case in &golden.cases {
        let line = serde_json::json!({
            "id": case.id, "question": case.question, "context": case.context, "params": case.params,
        });
        lines.push_str(&format!("{line}\n"));
    }
    std::fs::write(&input, lines).unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        &bert_dir(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let outputs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outputs.len(), golden.cases.len());
    for (case, out) in golden.cases.iter().zip(&outputs) {
        assert_eq!(out["id"], case.id.as_str());
        let answers: Vec<bertqa::Answer> = serde_json::from_value(out["answers"].clone()).unwrap();
        let errors = common::compare_answers(&case.id, &answers, &case.expected);
        assert!(errors.is_empty(), "{errors:?}");
    }
}

#[test]
fn malformed_jsonl_names_the_line() {
    let dir = temp_dir("badjsonl");
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        "{\"question\": \"Who?\", \"context\": \"Marie Curie.\"}\n{\"question\": \"Who?\"}\n",
    )
    .unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        &bert_dir(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_user_error(&out, "in.jsonl:2");
    assert_user_error(&out, "context");
}

#[test]
fn empty_question_or_context_is_refused() {
    let out = bertqa(&[
        "ask",
        "--model",
        &bert_dir(),
        "-q",
        "  ",
        "-c",
        "Some text.",
    ]);
    assert_user_error(&out, "question is empty");
    let out = bertqa(&["ask", "--model", &bert_dir(), "-q", "Who?", "-c", " \n\t "]);
    assert_user_error(&out, "context is empty");
}

#[test]
fn non_utf8_context_file_names_the_byte_offset() {
    let dir = temp_dir("latin1");
    let path = dir.join("ctx.txt");
    std::fs::write(&path, b"Caf\xe9 au lait").unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        &bert_dir(),
        "-q",
        "What?",
        "--context-file",
        path.to_str().unwrap(),
    ]);
    assert_user_error(&out, "offset 3");
}

#[test]
fn missing_weights_are_reported() {
    let dir = fixture_copy("noweights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        dir.to_str().unwrap(),
        "-q",
        "Who?",
        "-c",
        "Marie Curie.",
    ]);
    assert_user_error(&out, "model.safetensors");
}

#[test]
fn truncated_weights_name_the_file_and_tensor() {
    let dir = fixture_copy("truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        dir.to_str().unwrap(),
        "-q",
        "Who?",
        "-c",
        "Marie Curie.",
    ]);
    assert_user_error(&out, "model.safetensors");
    assert_user_error(&out, "truncated");
    assert_user_error(&out, "tensor `");
}

#[test]
fn missing_tensor_is_named() {
    use candle_core::{safetensors, Device};
    let dir = fixture_copy("missingtensor");
    let path = dir.join("model.safetensors");
    let mut tensors = safetensors::load(&path, &Device::Cpu).unwrap();
    tensors
        .remove("bert.encoder.layer.1.output.dense.weight")
        .unwrap();
    safetensors::save(&tensors, &path).unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        dir.to_str().unwrap(),
        "-q",
        "Who?",
        "-c",
        "Marie Curie.",
    ]);
    assert_user_error(&out, "bert.encoder.layer.1.output.dense.weight");
}

#[test]
fn unsupported_model_type_lists_supported_ones() {
    let dir = fixture_copy("xlnet");
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"bert\"", "\"xlnet\"");
    std::fs::write(&config, text).unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        dir.to_str().unwrap(),
        "-q",
        "Who?",
        "-c",
        "Marie Curie.",
    ]);
    assert_user_error(&out, "unsupported model_type `xlnet`");
    assert_user_error(&out, "bert");
}

#[test]
fn huge_context_is_refused_with_the_limit_and_the_flag() {
    let dir = temp_dir("huge");
    let path = dir.join("ctx.txt");
    let sentence = "The quick brown fox jumps over the lazy dog. ";
    std::fs::write(&path, sentence.repeat(10_000_000 / sentence.len())).unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        &bert_dir(),
        "-q",
        "What jumps?",
        "--context-file",
        path.to_str().unwrap(),
    ]);
    assert_user_error(&out, "--max-context-chars");
}

#[test]
fn raised_context_limit_answers_a_long_context() {
    let dir = temp_dir("long");
    let path = dir.join("ctx.txt");
    let mut text = "The quick brown fox jumps over the lazy dog. ".repeat(300);
    text.push_str("Marie Curie won the Nobel Prize in 1903.");
    std::fs::write(&path, &text).unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        &bert_dir(),
        "-q",
        "Who won?",
        "--context-file",
        path.to_str().unwrap(),
        "--max-context-chars",
        "20000",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answers: Vec<bertqa::Answer> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answers.len(), 1);
    let chars: Vec<char> = text.chars().collect();
    let a = &answers[0];
    assert_eq!(a.answer, chars[a.start..a.end].iter().collect::<String>());
}

/// Lays the fixture out as huggingface_hub's cache does: models--org--name/{refs,snapshots}.
fn fake_hub_cache(root: &Path, repo: &str) {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), commit).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        std::fs::copy(common::fixture("bert-uncased").join(f), snapshot.join(f)).unwrap();
    }
}

#[test]
fn hub_id_resolves_from_the_cache_offline() {
    let dir = temp_dir("hubcache");
    fake_hub_cache(&dir, "acme/tiny-bert-qa");
    let case = seed_case("seed-0");
    for offline in [["--offline"].as_slice(), [].as_slice()] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bertqa"));
        cmd.args([
            "ask",
            "--model",
            "acme/tiny-bert-qa",
            "--json",
            "-q",
            &case.question,
            "-c",
            &case.context,
        ])
        .args(offline)
        .env("HF_HUB_CACHE", &dir)
        .env("HF_HUB_OFFLINE", "1");
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let answers: Vec<bertqa::Answer> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(common::compare_answers(&case.id, &answers, &case.expected).is_empty());
    }
    // HF_HOME/hub is the default cache location.
    let home = temp_dir("hfhome");
    fake_hub_cache(&home.join("hub"), "acme/tiny-bert-qa");
    let out = Command::new(env!("CARGO_BIN_EXE_bertqa"))
        .args([
            "ask",
            "--offline",
            "--model",
            "acme/tiny-bert-qa",
            "-q",
            "Who?",
            "-c",
            "Marie Curie.",
        ])
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", &home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `ask` with the Hub id `acme/not-downloaded`, an empty cache and `env` set.
fn ask_missing_hub_id(cache: &str, env: &[(&str, &str)]) -> Output {
    let dir = temp_dir(cache);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bertqa"));
    cmd.args([
        "ask",
        "--model",
        "acme/not-downloaded",
        "-q",
        "Who?",
        "-c",
        "Marie Curie.",
    ])
    .env("HF_HUB_CACHE", &dir)
    .env_remove("HF_HUB_OFFLINE");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().unwrap()
}

#[test]
fn offline_hub_id_missing_from_cache_says_what_to_do() {
    let out = ask_missing_hub_id("emptycache", &[("HF_HUB_OFFLINE", "1")]);
    assert_user_error(&out, "offline");
    assert_user_error(&out, "acme/not-downloaded");
}

#[test]
fn zero_or_garbled_thread_counts_are_refused() {
    for bad in ["0", "-1", "two"] {
        let out = bertqa(&[
            "ask",
            "--model",
            &bert_dir(),
            &format!("--threads={bad}"),
            "-q",
            "Who?",
            "-c",
            "Marie Curie.",
        ]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--threads {bad}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("--threads"), "{}", stderr(&out));
    }
}

#[test]
fn hub_download_failure_names_its_cause() {
    // Nothing listens on the discard port of the loopback address: the download is refused, and
    // the error must say so rather than only "not found".
    let out = ask_missing_hub_id("unreachablehub", &[("HF_ENDPOINT", "http://127.0.0.1:9")]);
    assert_user_error(&out, "acme/not-downloaded");
    assert_user_error(&out, "127.0.0.1:9");
    assert_user_error(&out, "refused");
}

#[test]
fn reference_engine_flag_gives_the_golden_answers_too() {
    ask_seed_case_json(&["--reference-engine"]);
}

#[test]
fn int8_on_an_architecture_without_the_fast_engine_says_what_to_do() {
    // MobileBERT's bottleneck attention is a variant the fast engine leaves to the reference one.
    let variant =
        common::fixture_with_config("mobilebert", &[("use_bottleneck_attention", true.into())]);
    let out = bertqa(&[
        "ask",
        "--model",
        &variant.display().to_string(),
        "--quantize",
        "int8",
        "-q",
        "Who?",
        "-c",
        "Marie won.",
    ]);
    assert_user_error(&out, "drop the quantization option");
}

/// `--device` and `--dtype` on every subcommand: a GPU on a build without the `cuda` feature
/// is refused saying how to rebuild; reduced precision on the CPU and unknown devices are
/// refused, all before any model loads.
#[test]
fn device_and_dtype_errors_name_what_is_missing() {
    let bert = bert_dir();
    let out = temp_dir("device");
    let out = out.to_str().unwrap();
    let data = common::shared().join("data/xquad-en-train.json");
    let data = data.to_str().unwrap();
    let commands: [Vec<&str>; 4] = [
        vec!["ask", "--model", &bert, "-q", "Who?", "-c", "Someone."],
        vec!["eval", "--model", &bert, "--data", data],
        vec!["serve", "--model", &bert, "--port", "0"],
        vec![
            "train",
            "--model",
            &bert,
            "--train-data",
            data,
            "--output",
            out,
        ],
    ];
    for command in &commands {
        let with = |extra: &[&str]| {
            let mut args = command.clone();
            args.extend_from_slice(extra);
            bertqa(&args)
        };
        if !cfg!(feature = "cuda") {
            let o = with(&["--device", "cuda"]);
            assert_user_error(&o, "built without CUDA support");
            assert_user_error(&o, "--features cuda");
        }
        assert_user_error(&with(&["--dtype", "bf16"]), "runs on a GPU only");
        assert_user_error(&with(&["--device", "tpu"]), "cuda:N");
        assert_user_error(&with(&["--dtype", "f64"]), "f32, bf16 or f16");
    }
}
