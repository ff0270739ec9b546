//! Hostile input to the CLI and training: each case once crashed or misled bertqa; now each is
//! a clear error (exit 2, no panic) or a correct answer.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

fn bertqa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bertqa"))
        .args(args)
        .output()
        .expect("run bertqa")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_user_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn minilm() -> String {
    common::shared()
        .join("models/minilm-xquad-qa")
        .display()
        .to_string()
}

/// A question that leaves fewer context tokens per window than `doc_stride`, with default
/// parameters: the tokenizer's assertion used to end the process.
#[test]
fn a_question_that_leaves_no_room_for_the_stride_is_refused() {
    let question = "why ".repeat(300);
    let context = "word ".repeat(200);
    let out = bertqa(&[
        "ask",
        "--model",
        &minilm(),
        "--question",
        &question,
        "--context",
        &context,
    ]);
    assert_user_error(
        &out,
        &[
            "question is 300 tokens",
            "max_seq_len 384",
            "doc_stride 128",
            "lower doc_stride",
        ],
    );
    let question = "why ".repeat(400);
    let out = bertqa(&["ask", "--model", &minilm(), "-q", &question, "-c", &context]);
    assert_user_error(&out, &["question is 400 tokens", "no context fits"]);
}

/// Window lengths too small for any question are refused, not ignored.
#[test]
fn tiny_max_seq_len_is_refused() {
    for n in ["0", "1", "3"] {
        let out = bertqa(&[
            "ask",
            "--model",
            &minilm(),
            "-q",
            "Who wrote it?",
            "-c",
            "Ann wrote it.",
            "--max-seq-len",
            n,
        ]);
        assert_user_error(&out, &[&format!("max_seq_len {n}")]);
    }
}

/// `--max-answer-len` beyond any window means "no limit" (it used to overflow into no answers).
#[test]
fn huge_max_answer_len_still_answers() {
    let model = minilm();
    let ask = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "ask",
            "--model",
            &model,
            "-q",
            "Who wrote it?",
            "-c",
            "Ann wrote it.",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = bertqa(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let answers = ask(&["--max-answer-len", "18446744073709551615"]);
    assert_eq!(answers.as_array().map(Vec::len), Some(1), "{answers}");
    // The context is shorter than the default limit of 15 tokens, so "no limit" must give the
    // default's answer: the same span and score.
    assert_eq!(answers, ask(&[]));
}

/// JSONL `params` must be an object (a list was read positionally); `null` means defaults, as
/// in the server.
#[test]
fn jsonl_params_must_be_an_object_or_null() {
    let dir = common::TempDir::new("jsonl-params");
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        r#"{"question": "Who wrote it?", "context": "Ann wrote it.", "params": [3, 5]}"#,
    )
    .unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        &minilm(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_user_error(&out, &["in.jsonl:1", "an object"]);
    std::fs::write(
        &input,
        r#"{"question": "Who wrote it?", "context": "Ann wrote it.", "params": null}"#,
    )
    .unwrap();
    let out = bertqa(&[
        "ask",
        "--model",
        &minilm(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Ann"));
}

/// A copy of the bert fixture whose config.json has `edit` applied.
fn broken_model(name: &str, edit: impl Fn(&mut serde_json::Value)) -> common::TempDir {
    let dir = common::TempDir::new(name);
    for entry in std::fs::read_dir(common::fixture("bert-uncased")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    dir
}

fn small_squad(dir: &Path) -> String {
    let data = dir.join("train.json");
    std::fs::write(
        &data,
        r#"{"data": [{"title": "Cats", "paragraphs": [{"context": "Cats purr when they are content.",
            "qas": [{"id": "a", "question": "What do cats do?", "answers": [{"text": "purr", "answer_start": 5}]}]}]}]}"#,
    )
    .unwrap();
    data.display().to_string()
}

/// Attention heads that do not split the hidden size: a clear error on every path (the
/// reference models divided by zero, or failed with a tensor backtrace).
#[test]
fn heads_that_do_not_split_the_hidden_size_are_refused() {
    for heads in [0, 5] {
        let model = broken_model("heads", |c| c["num_attention_heads"] = heads.into());
        let m = model.to_str().unwrap();
        let expected = format!("{heads} attention heads");
        for engine in [&[][..], &["--reference-engine"][..]] {
            let mut args = vec!["ask", "--model", m, "-q", "Who?", "-c", "Ann wrote it."];
            args.extend_from_slice(engine);
            assert_user_error(&bertqa(&args), &[&expected]);
        }
        let data = small_squad(&model);
        let out = model.join("out");
        let args = [
            "train",
            "--model",
            m,
            "--train-data",
            &data,
            "--output",
            out.to_str().unwrap(),
            "--max-steps",
            "1",
        ];
        assert_user_error(&bertqa(&args), &[&expected]);
    }
}

fn train(model: &str, data: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--model",
        model,
        "--train-data",
        data.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--max-seq-len",
        "48",
        "--doc-stride",
        "16",
    ];
    args.extend_from_slice(extra);
    bertqa(&args)
}

fn write_data(path: &Path, question: &str, answer_text: &str) {
    let context = "Cats purr when they are content. Dogs bark at strangers in the street.";
    let start = context[..context.find(answer_text).unwrap()]
        .chars()
        .count();
    let json = serde_json::json!({"data": [{"title": "Pets", "paragraphs": [{"context": context,
        "qas": [{"id": "a", "question": question, "answers": [{"text": answer_text, "answer_start": start}]},
                {"id": "b", "question": "Who barks?", "answers": [{"text": "Dogs", "answer_start": 33}]}]}]}]});
    std::fs::write(path, json.to_string()).unwrap();
}

/// `--resume` refuses data that changed, even when the number of windows did not; and a
/// question too long for the window is a clear error in training too.
#[test]
fn resume_refuses_changed_data_and_train_refuses_long_questions() {
    let dir = common::TempDir::new("resume-data");
    let bert = common::fixture("bert-uncased").display().to_string();
    let (data, out) = (dir.join("train.json"), dir.join("out"));
    write_data(&data, "What do cats do?", "purr");
    let first = train(
        &bert,
        &data,
        &out,
        &["--max-steps", "2", "--save-every", "1"],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    // One word of one question changed: same number of windows, other data.
    write_data(&data, "What do dogs do?", "purr");
    let resumed = train(&bert, &data, &out, &["--max-steps", "2", "--resume"]);
    assert_user_error(&resumed, &["--resume", "data_sha256"]);
    // The answer text cut: same windows, other labels.
    write_data(&data, "What do cats do?", "pur");
    let resumed = train(&bert, &data, &out, &["--max-steps", "2", "--resume"]);
    assert_user_error(&resumed, &["--resume", "data_sha256"]);

    write_data(&data, &"why ".repeat(60), "purr");
    let long = train(&bert, &data, &dir.join("out2"), &["--max-steps", "1"]);
    assert_user_error(&long, &["question", "max_seq_len 48"]);
}

/// Temporaries left by a killed run are removed by the next one.
#[test]
fn temporaries_of_killed_runs_are_cleaned_up() {
    let dir = common::TempDir::new("stale");
    let bert = common::fixture("bert-uncased").display().to_string();
    let (data, out) = (dir.join("train.json"), dir.join("out"));
    write_data(&data, "What do cats do?", "purr");
    // pid_max is at most 2^22 on Linux: no process has these ids.
    std::fs::create_dir_all(out.join(".tmp-final-4194999")).unwrap();
    std::fs::create_dir_all(out.join(".tmp-checkpoint-3-4194998")).unwrap();
    let run = train(&bert, &data, &out, &["--max-steps", "1"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(!out.join(".tmp-final-4194999").exists());
    assert!(!out.join(".tmp-checkpoint-3-4194998").exists());

    let predictions = dir.join("pred.json");
    std::fs::write(dir.join(".pred.json.tmp-4194999"), b"{").unwrap();
    let eval = bertqa(&[
        "eval",
        "--model",
        &bert,
        "--data",
        data.to_str().unwrap(),
        "--predictions",
        predictions.to_str().unwrap(),
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    assert!(predictions.is_file());
    assert!(!dir.join(".pred.json.tmp-4194999").exists());
}

/// Logs carry no terminal colour codes when stderr is not a terminal.
#[test]
fn logs_have_no_colour_codes_off_a_terminal() {
    let out = bertqa(&[
        "ask",
        "-v",
        "--model",
        &minilm(),
        "-q",
        "Who?",
        "-c",
        "Ann wrote it.",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("DEBUG") || err.contains("INFO"),
        "no log lines: {err}"
    );
    assert!(!err.contains('\u{1b}'), "colour codes in: {err:?}");
}
