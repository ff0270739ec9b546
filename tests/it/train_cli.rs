//! `bertqa train` on bad input (clear messages and exit status 2), and its per-epoch evaluation.

use crate::common;

use std::process::Command;

fn temp_dir(name: &str) -> common::TempDir {
    common::TempDir::new(&format!("train-cli-{name}"))
}

fn train(data: &std::path::Path, output: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bertqa"))
        .args(["train", "--model"])
        .arg(common::fixture("bert-uncased"))
        .arg("--train-data")
        .arg(data)
        .arg("--output")
        .arg(output)
        .args([
            "--max-seq-len",
            "48",
            "--doc-stride",
            "16",
            "--max-steps",
            "1",
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_squad_names_the_question() {
    let dir = temp_dir("malformed");
    let data = dir.join("bad.json");
    let json = r#"{"data": [{"title": "Cats", "paragraphs": [{"context": "Cats purr.",
        "qas": [{"id": "q-17", "answers": []}]}]}]}"#;
    std::fs::write(&data, json).unwrap();
    let (code, err) = train(&data, &dir.join("out"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("q-17") && err.contains("Cats") && err.contains("question"),
        "{err}"
    );
}

#[test]
fn empty_data_and_unwritable_output_exit_2() {
    let dir = temp_dir("empty");
    let data = dir.join("empty.json");
    std::fs::write(&data, r#"{"data": []}"#).unwrap();
    let (code, err) = train(&data, &dir.join("out"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no questions"), "{err}");

    // An output path below a regular file cannot be created.
    let blocker = dir.join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let (code, err) = train(&data, &blocker.join("out"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("file/out") || err.contains("file"), "{err}");
}

#[test]
fn misaligned_answers_are_skipped_and_counted() {
    let dir = temp_dir("misaligned");
    let data = dir.join("train.json");
    let json = r#"{"data": [{"title": "Cats", "paragraphs": [{"context": "Cats purr when they are content.",
        "qas": [
          {"id": "ok", "question": "What do cats do?", "answers": [{"text": "purr", "answer_start": 5}]},
          {"id": "off", "question": "When?", "answers": [{"text": "content", "answer_start": 3}]}
        ]}]}]}"#;
    std::fs::write(&data, json).unwrap();
    let out = dir.join("out");
    let (code, err) = train(&data, &out);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("skipped 1 question"), "{err}");
    assert!(out.join("model.safetensors").is_file());
    // All questions misaligned → nothing to train on.
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        json.replace(r#""answer_start": 5"#, r#""answer_start": 6"#),
    )
    .unwrap();
    let (code, err) = train(&bad, &dir.join("out2"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no usable question"), "{err}");
}

/// The EM/F1 printed after the last epoch are those `bertqa eval` gives the saved model.
#[test]
fn per_epoch_evaluation_scores_the_current_weights() {
    let dir = temp_dir("eval");
    let data = dir.join("train.json");
    let json = r#"{"data": [{"title": "Cats", "paragraphs": [{"context": "Cats purr when they are content. Dogs bark at strangers.",
        "qas": [
          {"id": "a", "question": "What do cats do?", "answers": [{"text": "purr", "answer_start": 5}]},
          {"id": "b", "question": "Who barks?", "answers": [{"text": "Dogs", "answer_start": 33}]},
          {"id": "c", "question": "When do cats purr?", "answers": [{"text": "when they are content", "answer_start": 10}]}
        ]}]}]}"#;
    std::fs::write(&data, json).unwrap();
    let out = dir.join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_bertqa"))
        .args(["train", "--model"])
        .arg(common::fixture("bert-uncased"))
        .arg("--train-data")
        .arg(&data)
        .arg("--eval-data")
        .arg(&data)
        .arg("--output")
        .arg(&out)
        .args(["--epochs", "1", "--learning-rate", "1e-3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("eval EM"))
        .unwrap_or_else(|| panic!("no evaluation line in:\n{err}"));
    let eval = Command::new(env!("CARGO_BIN_EXE_bertqa"))
        .args(["eval", "--json", "--model"])
        .arg(&out)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let (em, f1) = (
        report["exact_match"].as_f64().unwrap(),
        report["f1"].as_f64().unwrap(),
    );
    assert!(
        line.ends_with(&format!("eval EM {em:.2} F1 {f1:.2}")),
        "training said {line:?}; eval of the saved model: EM {em:.2} F1 {f1:.2}"
    );
}
