//! Helpers shared by the integration tests: locating ../shared and checking golden files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bertqa::{EngineChoice, LoadOptions, QaParams, QaPipeline, QaRequest};
use serde::Deserialize;

/// The read-only reference folder beside the repository (override with BERTQA_SHARED).
pub fn shared() -> PathBuf {
    let dir = std::env::var_os("BERTQA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(
        dir.is_dir(),
        "the tests read the reference folder {} (fixtures, models, data), which is missing: \
         put it beside the clone or point BERTQA_SHARED at it (README, \"The reference folder\")",
        dir.display()
    );
    dir
}

pub fn fixture(arch: &str) -> PathBuf {
    shared().join("fixtures").join(arch)
}

/// Every fixture folder (one with a config.json), sorted by name, with its `model_type`.
pub fn all_fixtures() -> Vec<(String, String)> {
    let root = shared().join("fixtures");
    let entries = std::fs::read_dir(&root).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the tests read ../shared; see the README)",
            root.display()
        )
    });
    let mut found: Vec<(String, String)> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let config = bertqa::checkpoint::read_json(&path.join("config.json")).ok()?;
            let model_type = config["model_type"].as_str()?.to_string();
            Some((path.file_name()?.to_str()?.to_string(), model_type))
        })
        .collect();
    found.sort();
    found
}

/// One fixture per architecture bertqa supports: for each `model_type` of the registry, the
/// first fixture (by name) of that type. Fails when the registry names a type no fixture has,
/// so that a new architecture cannot go untested.
pub fn architecture_fixtures() -> Vec<String> {
    let fixtures = all_fixtures();
    bertqa::models::supported_model_types()
        .into_iter()
        .map(|model_type| {
            fixtures
                .iter()
                .find(|(_, t)| t == model_type)
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| {
                    panic!("no fixture in ../shared/fixtures has model_type {model_type}")
                })
        })
        .collect()
}

/// A fresh scratch folder named after `name`, removed with everything in it when dropped, so
/// a test run (passing or failing) leaves nothing behind in the temp directory.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("bertqa-{name}-"))
            .tempdir()
            .expect("create a scratch folder");
        TempDir(dir)
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

#[derive(Deserialize)]
pub struct Golden {
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
pub struct Case {
    pub id: String,
    pub question: String,
    pub context: String,
    pub params: QaParams,
    pub expected: Vec<Expected>,
    #[serde(default)]
    pub features: Vec<Feature>,
}

#[derive(Deserialize, Debug)]
pub struct Expected {
    pub score: f64,
    pub start: usize,
    pub end: usize,
    pub answer: String,
}

#[derive(Deserialize)]
pub struct Feature {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Option<Vec<u32>>,
    pub offsets: Vec<(usize, usize)>,
    pub start_logits: Vec<f32>,
    pub end_logits: Vec<f32>,
}

pub fn load_golden(path: &std::path::Path) -> Golden {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let golden: Golden =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // A golden file without cases, or a case without expected answers, would check nothing.
    assert!(!golden.cases.is_empty(), "{}: no cases", path.display());
    for case in &golden.cases {
        assert!(
            !case.expected.is_empty(),
            "{}: case {} expects no answer",
            path.display(),
            case.id
        );
    }
    golden
}

pub fn load_pipeline(dir: &std::path::Path) -> QaPipeline {
    load_pipeline_with(dir, EngineChoice::Auto)
}

pub fn load_pipeline_with(dir: &std::path::Path, engine: EngineChoice) -> QaPipeline {
    let dir = dir.to_str().expect("utf-8 path");
    let options = LoadOptions {
        engine,
        ..LoadOptions::default()
    };
    QaPipeline::load(dir, &options).unwrap_or_else(|e| panic!("load {dir}: {e}"))
}

pub const TOL: f64 = 1e-4;

pub fn request(case: &Case) -> QaRequest {
    QaRequest {
        question: case.question.clone(),
        context: case.context.clone(),
        params: case.params.clone(),
    }
}

/// Windows (ids, token types, offsets), logits and answers of one case against the golden file.
/// Returns a description of every mismatch.
pub fn check_case(qa: &QaPipeline, case: &Case) -> Vec<String> {
    let mut errors = Vec::new();
    let req = request(case);
    if !case.features.is_empty() {
        let prepared = match qa.prepare(&req) {
            Ok(p) => p,
            Err(e) => return vec![format!("{}: prepare failed: {e}", case.id)],
        };
        if prepared.windows.len() != case.features.len() {
            errors.push(format!(
                "{}: {} windows, expected {}",
                case.id,
                prepared.windows.len(),
                case.features.len()
            ));
            return errors;
        }
        let refs: Vec<_> = prepared.windows.iter().collect();
        let logits = qa.run_windows(&refs).expect("model run");
        for (i, ((w, f), (s, e))) in prepared
            .windows
            .iter()
            .zip(&case.features)
            .zip(&logits)
            .enumerate()
        {
            if w.input_ids() != f.input_ids.as_slice() {
                errors.push(format!("{} window {i}: input_ids differ", case.id));
                continue;
            }
            if let Some(types) = &f.token_type_ids {
                if w.token_type_ids() != types.as_slice() {
                    errors.push(format!("{} window {i}: token_type_ids differ", case.id));
                }
            }
            if w.offsets() != f.offsets.as_slice() {
                errors.push(format!("{} window {i}: offsets differ", case.id));
            }
            for (name, got, want) in [("start", s, &f.start_logits), ("end", e, &f.end_logits)] {
                let worst = got
                    .iter()
                    .zip(want.iter())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                if worst as f64 > TOL {
                    errors.push(format!(
                        "{} window {i}: {name} logits differ by up to {worst}",
                        case.id
                    ));
                }
            }
        }
    }
    match qa.answer_one(&req) {
        Err(e) => errors.push(format!("{}: answer failed: {e}", case.id)),
        Ok(answers) => errors.extend(compare_answers(&case.id, &answers, &case.expected)),
    }
    errors
}

pub fn compare_answers(id: &str, got: &[bertqa::Answer], want: &[Expected]) -> Vec<String> {
    let mut errors = Vec::new();
    if got.len() != want.len() {
        errors.push(format!(
            "{id}: {} answers, expected {}",
            got.len(),
            want.len()
        ));
    }
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        if g.start != w.start || g.end != w.end || g.answer != w.answer {
            errors.push(format!(
                "{id} answer {k}: got {:?} [{}, {}) {:.7}, expected {:?} [{}, {}) {:.7}",
                g.answer, g.start, g.end, g.score, w.answer, w.start, w.end, w.score
            ));
        } else if (g.score as f64 - w.score).abs() > TOL {
            errors.push(format!(
                "{id} answer {k}: score {} expected {}",
                g.score, w.score
            ));
        }
    }
    errors
}

/// Checks every case of `<fixture>/golden.json` with both engines (the fast one where it covers
/// the architecture, and the reference models); panics listing all mismatches.
pub fn check_fixture(arch: &str) {
    let dir = fixture(arch);
    let golden = load_golden(&dir.join("golden.json"));
    let mut errors: Vec<String> = Vec::new();
    for engine in [EngineChoice::Auto, EngineChoice::Reference] {
        let qa = load_pipeline_with(&dir, engine);
        let name = if qa.is_fast() { "fast" } else { "reference" };
        if engine == EngineChoice::Auto && !qa.is_fast() {
            continue; // the reference pass below covers it
        }
        errors.extend(
            golden
                .cases
                .iter()
                .flat_map(|c| check_case(&qa, c))
                .map(|e| format!("[{name}] {e}")),
        );
    }
    assert!(
        errors.is_empty(),
        "{arch}: {} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

/// A copy of fixture `arch` whose config.json has `changes` applied: a checkpoint with options
/// the fixtures do not cover. The weights are the fixture's, so it loads only where the changed
/// options leave the tensors' shapes as they are.
pub fn fixture_with_config(arch: &str, changes: &[(&str, serde_json::Value)]) -> TempDir {
    let dir = TempDir::new(arch);
    for entry in std::fs::read_dir(fixture(arch)).expect("read the fixture") {
        let path = entry.expect("fixture entry").path();
        std::fs::copy(&path, dir.join(path.file_name().expect("file name"))).expect("copy");
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    for (key, value) in changes {
        config[*key] = value.clone();
    }
    std::fs::write(&path, config.to_string()).expect("write config");
    dir
}
