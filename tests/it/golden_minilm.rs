//! Golden parity on a real checkpoint: all 894 questions of xquad-en-train answered by the
//! fine-tuned MiniLM exactly as transformers' pipeline answered them (top 3 each).

use crate::common;

#[test]
fn minilm_xquad_answers_match_transformers() {
    let dir = common::shared().join("models/minilm-xquad-qa");
    let qa = common::load_pipeline(&dir);
    let golden = common::load_golden(&dir.join("golden-train.json"));
    assert_eq!(golden.cases.len(), 894);
    let mut errors = Vec::new();
    // Batched as `bertqa eval` does: windows of many questions share model calls.
    for chunk in golden.cases.chunks(64) {
        let prepared: Vec<_> = chunk
            .iter()
            .map(|c| qa.prepare(&common::request(c)).expect("prepare"))
            .collect();
        let logits = qa.run_prepared(&prepared, |_| {}).expect("model run");
        for ((case, p), l) in chunk.iter().zip(&prepared).zip(&logits) {
            let answers = p.answers(l).answers;
            errors.extend(common::compare_answers(&case.id, &answers, &case.expected));
        }
    }
    assert!(
        errors.is_empty(),
        "{} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

/// `answer_logits` (the answering path) computes the last layer only for tokens that can be
/// part of an answer: their logits are exactly those of `run_windows`, the others NaN; with
/// int8 weights too, and with windows of several questions in one call.
#[test]
fn answer_logits_skip_only_the_masked_tokens() {
    let dir = common::shared().join("models/minilm-xquad-qa");
    let golden = common::load_golden(&dir.join("golden-train.json"));
    for precision in [bertqa::Precision::F32, bertqa::Precision::Int8] {
        let options = bertqa::LoadOptions {
            precision,
            ..bertqa::LoadOptions::default()
        };
        let qa = bertqa::QaPipeline::load(dir.to_str().unwrap(), &options).expect("load");
        assert!(qa.is_fast());
        let prepared: Vec<_> = golden.cases[..24]
            .iter()
            .map(|c| qa.prepare(&common::request(c)).expect("prepare"))
            .collect();
        let windows: Vec<_> = prepared.iter().flat_map(|p| &p.windows).collect();
        let full = qa.run_windows(&windows).expect("run");
        let answering = qa.answer_logits(&windows).expect("run");
        let (mut kept, mut skipped) = (0, 0);
        for ((w, (s, e)), (fs, fe)) in windows.iter().zip(&answering).zip(&full) {
            assert_eq!((s.len(), e.len()), (w.len(), w.len()));
            for t in 0..w.len() {
                if w.p_mask[t] {
                    assert!(s[t].is_nan() && e[t].is_nan(), "{precision:?}: token {t}");
                    skipped += 1;
                } else {
                    assert_eq!(
                        (s[t].to_bits(), e[t].to_bits()),
                        (fs[t].to_bits(), fe[t].to_bits())
                    );
                    kept += 1;
                }
            }
        }
        assert!(kept > 0 && skipped > 0);
    }
}
