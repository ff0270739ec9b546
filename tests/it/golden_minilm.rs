//! Golden parity on a real checkpoint: all 894 questions of xquad-en-train answered by the
//! fine-tuned MiniLM exactly as transformers' pipeline answered them (top 3 each).

use crate::common;

use bertqa::decode::decode;

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
            let answers = decode(&p.context, &p.windows, l, &p.decode);
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
