//! `bertqa eval` end to end: the real binary on a slice of XQuAD with the MiniLM QA model, its
//! figures against the official metric of transformers' own answers (golden-train.json).

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bertqa::squad::{self, SquadDataset};
use serde_json::{json, Value};

/// Questions in the slice.
const QUESTIONS: usize = 20;

fn model_dir() -> PathBuf {
    common::shared().join("models/minilm-xquad-qa")
}

/// A fresh folder for one test's files.
fn work_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("eval_cli-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test folder");
    dir
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first `n` questions of the XQuAD training file, articles and paragraphs kept.
fn xquad_slice(n: usize) -> Value {
    let mut full = read_json(&common::shared().join("data/xquad-en-train.json"));
    let mut left = n;
    let mut articles = Vec::new();
    for article in full["data"].as_array_mut().expect("data").drain(..) {
        if left == 0 {
            break;
        }
        let mut article = article;
        let mut paragraphs = Vec::new();
        for mut paragraph in article["paragraphs"].as_array_mut().unwrap().drain(..) {
            if left == 0 {
                break;
            }
            let qas = paragraph["qas"].as_array_mut().unwrap();
            qas.truncate(left);
            left -= qas.len();
            paragraphs.push(paragraph);
        }
        article["paragraphs"] = Value::Array(paragraphs);
        articles.push(article);
    }
    assert_eq!(left, 0, "the data file has fewer than {n} questions");
    json!({"version": full["version"].clone(), "data": articles})
}

fn write(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).expect("write test file");
}

fn bertqa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bertqa"))
        .args(args)
        .args(["--threads", "2"])
        .output()
        .expect("run bertqa")
}

/// `bertqa eval` with the MiniLM model on `data`, then `extra` arguments.
fn eval(data: &Path, extra: &[&str]) -> Output {
    let model = model_dir();
    let mut args = vec![
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    bertqa(&args)
}

fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// transformers' best answer to every question of the training file, by question id, and the
/// pipeline's `top_k` they were made with.
fn golden_answers() -> (HashMap<String, String>, usize) {
    let cases = common::load_golden(&model_dir().join("golden-train.json")).cases;
    let top_k = cases[0].params.top_k.unwrap_or(1);
    assert!(cases.iter().all(|c| c.params.top_k.unwrap_or(1) == top_k));
    let best = cases
        .into_iter()
        .map(|c| {
            let best = c
                .expected
                .first()
                .map_or(String::new(), |a| a.answer.clone());
            (c.id, best)
        })
        .collect();
    (best, top_k)
}

#[test]
fn eval_scores_transformers_answers() {
    let dir = work_dir("v1");
    let data_path = dir.join("slice.json");
    write(&data_path, &xquad_slice(QUESTIONS));
    let predictions_path = dir.join("predictions.json");
    // The golden answers are the first of the pipeline's top_k (3): ask for the same pool, since
    // merging spans of equal text can reorder the first answer.
    let (golden, top_k) = golden_answers();
    let out = eval(
        &data_path,
        &[
            "--predictions",
            predictions_path.to_str().unwrap(),
            "--top-k",
            &top_k.to_string(),
            "--json",
        ],
    );
    let stderr = utf8(&out.stderr);
    assert!(out.status.success(), "bertqa eval failed: {stderr}");
    // No progress bar when stderr is not a terminal.
    assert!(!stderr.contains("questions"), "stderr: {stderr}");

    let dataset = SquadDataset::from_file(&data_path).unwrap();
    assert_eq!(dataset.len(), QUESTIONS);
    let expected: HashMap<String, String> = dataset
        .examples
        .iter()
        .map(|e| (e.id.clone(), golden[&e.id].clone()))
        .collect();

    // The predictions file: transformers' answer for each question.
    let written = read_json(&predictions_path);
    let written = written.as_object().expect("predictions file is an object");
    assert_eq!(written.len(), QUESTIONS);
    for e in &dataset.examples {
        assert_eq!(
            written[&e.id].as_str(),
            Some(expected[&e.id].as_str()),
            "question {} ({:?})",
            e.id,
            e.question
        );
    }
    // Keys in dataset order (the parsed map above is sorted, so look at the text).
    let raw = std::fs::read_to_string(&predictions_path).unwrap();
    let positions: Vec<usize> = dataset
        .examples
        .iter()
        .map(|e| raw.find(&format!("\"{}\"", e.id)).expect("id in file"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "ids out of order"
    );

    // The printed figures: the official metric of transformers' answers.
    let want = squad::evaluate(&dataset, &expected, None);
    let report: Value = serde_json::from_str(utf8(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", utf8(&out.stdout)));
    assert_eq!(report["exact_match"].as_f64(), Some(want.exact_match()));
    assert_eq!(report["f1"].as_f64(), Some(want.f1()));
    assert_eq!(report["total"].as_u64(), Some(QUESTIONS as u64));
    assert_eq!(report["squad_version"], "1.1");
    // A model trained on this data gets some right and some wrong.
    assert!(want.exact_match() > 0.0 && want.f1() < 100.0, "{want:?}");
    let seconds = report["seconds"].as_f64().expect("seconds");
    let rate = report["questions_per_second"].as_f64().expect("rate");
    assert!(seconds > 0.0 && (rate * seconds - QUESTIONS as f64).abs() < 1e-6);
    assert!(report.get("HasAns_exact").is_none(), "v2 keys on v1 data");
}

#[test]
fn eval_of_v2_data_reports_the_no_answer_breakdown() {
    let dir = work_dir("v2");
    let mut data = xquad_slice(8);
    data["version"] = json!("v2.0");
    // Make every other question unanswerable.
    let mut k = 0;
    for article in data["data"].as_array_mut().unwrap() {
        for paragraph in article["paragraphs"].as_array_mut().unwrap() {
            for qa in paragraph["qas"].as_array_mut().unwrap() {
                let impossible = k % 2 == 1;
                qa["is_impossible"] = json!(impossible);
                if impossible {
                    qa["answers"] = json!([]);
                }
                k += 1;
            }
        }
    }
    let data_path = dir.join("v2.json");
    write(&data_path, &data);
    let predictions_path = dir.join("predictions.json");
    let na_path = dir.join("na_probs.json");
    let out = eval(
        &data_path,
        &[
            "--predictions",
            predictions_path.to_str().unwrap(),
            "--na-probs",
            na_path.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", utf8(&out.stderr));
    let report: Value = serde_json::from_str(utf8(&out.stdout).trim()).expect("JSON report");

    // The figures are the official v2 metric of the files it wrote.
    let dataset = SquadDataset::from_file(&data_path).unwrap();
    let preds: HashMap<String, String> =
        serde_json::from_value(read_json(&predictions_path)).expect("{id: answer}");
    let probs: HashMap<String, f64> =
        serde_json::from_value(read_json(&na_path)).expect("{id: probability}");
    assert_eq!((preds.len(), probs.len()), (8, 8));
    assert!(probs.values().all(|p| (0.0..=1.0).contains(p)));
    let want = match squad::evaluate(&dataset, &preds, Some(&probs)) {
        squad::SquadMetrics::V2(m) => m,
        other => panic!("v2 data scored as {other:?}"),
    };
    assert_eq!(report["squad_version"], "v2.0");
    assert_eq!(report["exact"].as_f64(), Some(want.exact));
    assert_eq!(report["exact_match"].as_f64(), Some(want.exact));
    assert_eq!(report["f1"].as_f64(), Some(want.f1));
    assert_eq!(report["HasAns_total"].as_u64(), Some(4));
    assert_eq!(report["NoAns_total"].as_u64(), Some(4));
    assert_eq!(report["HasAns_f1"].as_f64(), want.has_ans_f1);
    assert_eq!(report["NoAns_exact"].as_f64(), want.no_ans_exact);
    assert_eq!(report["best_exact"].as_f64(), want.best_exact);
    assert_eq!(report["best_f1_thresh"].as_f64(), want.best_f1_thresh);
    // Each answer and no-answer probability is the pipeline's: top-1 with the empty answer
    // competing, and the empty answer's score.
    let qa = common::load_pipeline(&model_dir());
    for e in &dataset.examples {
        let mut request = bertqa::QaRequest::new(e.question.clone(), e.context.to_string());
        request.params.handle_impossible_answer = Some(true);
        let best = qa.answer_one(&request).unwrap();
        assert_eq!(preds[&e.id], best[0].answer, "question {}", e.id);
        // A pool larger than the number of candidate spans holds the empty answer.
        request.params.top_k = Some(100_000);
        let all = qa.answer_one(&request).unwrap();
        let null = all
            .iter()
            .find(|a| a.is_impossible())
            .expect("empty answer offered");
        // Batched with other questions' windows (padding) vs alone: float noise only.
        let (got, want) = (probs[&e.id], f64::from(null.score));
        assert!(
            (got - want).abs() <= 1e-4 * want,
            "question {}: no-answer probability {got}, pipeline {want}",
            e.id
        );
    }
}

#[test]
fn malformed_squad_file_exits_2_naming_the_field() {
    let dir = work_dir("malformed");
    let mut data = xquad_slice(3);
    let qa = &mut data["data"][0]["paragraphs"][0]["qas"][1];
    let id = qa["id"].as_str().unwrap().to_string();
    qa["answers"][0]["answer_start"] = json!("34");
    let path = dir.join("bad.json");
    write(&path, &data);
    let out = eval(&path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = utf8(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains("answers[0].answer_start") && stderr.contains(&id),
        "the message should name the field and the question: {stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_output_folder_is_refused_before_any_work() {
    let dir = work_dir("no-folder");
    let data_path = dir.join("slice.json");
    write(&data_path, &xquad_slice(2));
    let out = bertqa(&[
        "eval",
        "--model",
        "/nonexistent/model",
        "--data",
        data_path.to_str().unwrap(),
        "--predictions",
        dir.join("missing/predictions.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = utf8(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    // Refused before the model load, which would have failed differently.
    assert!(!stderr.contains("/nonexistent/model"), "{stderr}");
}

#[test]
fn xquad_file_parses_into_the_questions_transformers_answered() {
    let dataset = SquadDataset::from_file(common::shared().join("data/xquad-en-train.json"))
        .expect("the XQuAD file parses");
    assert_eq!(dataset.format, squad::SquadVersion::V1);
    let cases = common::load_golden(&model_dir().join("golden-train.json")).cases;
    assert_eq!(dataset.len(), cases.len());
    let titles: std::collections::HashSet<&str> =
        dataset.examples.iter().map(|e| e.title.as_str()).collect();
    assert_eq!(titles.len(), 36);
    for (example, case) in dataset.examples.iter().zip(&cases) {
        assert_eq!(example.id, case.id);
        assert_eq!(example.question, case.question);
        assert_eq!(&*example.context, case.context.as_str());
        // answer_start counts characters: the gold text sits at that character range.
        let chars: Vec<char> = example.context.chars().collect();
        for answer in &example.answers {
            let found: String = chars[answer.char_range()].iter().collect();
            assert_eq!(found, answer.text, "question {}", example.id);
        }
    }
}
