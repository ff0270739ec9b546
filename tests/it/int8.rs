//! The int8 path of the fast engine on the real MiniLM checkpoint: logits stay close to the
//! f32 ones and the top answers mostly agree with transformers' (quantization moves scores
//! slightly, so exact equality is not expected); where the fast engine does not run, int8 is
//! refused with advice.

use crate::common;

use bertqa::{EngineChoice, Error, LoadOptions, Precision, QaPipeline};

fn load(dir: &std::path::Path, precision: Precision) -> Result<QaPipeline, Error> {
    let options = LoadOptions {
        precision,
        ..LoadOptions::default()
    };
    QaPipeline::load(dir.to_str().expect("utf-8 path"), &options)
}

#[test]
fn int8_minilm_stays_close_to_f32_and_transformers() {
    let dir = common::shared().join("models/minilm-xquad-qa");
    let qa = load(&dir, Precision::Int8).expect("load int8");
    let exact = load(&dir, Precision::F32).expect("load f32");
    assert!(qa.is_fast());
    let golden = common::load_golden(&dir.join("golden-train.json"));
    let cases: Vec<_> = golden.cases.iter().take(120).collect();
    let (mut same_answer, mut worst, mut total_err, mut count) = (0usize, 0f32, 0f64, 0usize);
    for case in &cases {
        let prepared = qa.prepare(&common::request(case)).expect("prepare");
        let windows: Vec<_> = prepared.windows.iter().collect();
        let logits = qa.run_windows(&windows).expect("run int8");
        let reference = exact.run_windows(&windows).expect("run f32");
        for ((s, e), (s32, e32)) in logits.iter().zip(&reference) {
            for (got, want) in s.iter().zip(s32).chain(e.iter().zip(e32)) {
                let d = (got - want).abs();
                worst = worst.max(d);
                total_err += d as f64;
                count += 1;
            }
        }
        let answers = prepared.answers(&logits).answers;
        if answers.first().map(|a| &a.answer) == case.expected.first().map(|a| &a.answer) {
            same_answer += 1;
        }
    }
    assert!(count > 0, "no logits");
    let mean_err = total_err / count as f64;
    // Logits of this model span about ±10; int8 moves them by a few hundredths on average.
    assert!(mean_err < 0.1, "mean logit error {mean_err}");
    assert!(worst < 1.5, "worst logit error {worst}");
    let agreement = same_answer as f64 / cases.len() as f64;
    assert!(
        agreement >= 0.9,
        "top answers agree on {same_answer}/{}",
        cases.len()
    );
}

#[test]
fn int8_is_refused_where_the_fast_engine_does_not_run() {
    for dir in [common::fixture("albert"), common::fixture("bert-uncased")] {
        let reference = LoadOptions {
            precision: Precision::Int8,
            engine: EngineChoice::Reference,
            ..LoadOptions::default()
        };
        let err = match QaPipeline::load(dir.to_str().expect("utf-8 path"), &reference) {
            Ok(_) => panic!("{}: int8 accepted on the reference engine", dir.display()),
            Err(e) => e,
        };
        assert!(err.is_user_error(), "{err}");
        assert!(err.to_string().contains("int8"), "{err}");
    }
    // MobileBERT's bottleneck attention is a variant the fast engine leaves to the reference one.
    let variant =
        common::fixture_with_config("mobilebert", &[("use_bottleneck_attention", true.into())]);
    let err = match load(&variant, Precision::Int8) {
        Ok(_) => panic!("int8 accepted for mobilebert with bottleneck attention"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(
        message.contains("mobilebert") && message.contains("int8"),
        "{message}"
    );
}
