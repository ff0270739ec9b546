//! Dumps what the ranking of answers across passages sees, for choosing its weight:
//! every question of a SQuAD file asked over an index of the file's own paragraphs, with each
//! retrieved passage's BM25 score, whether it is the question's own paragraph, and the
//! reader's candidate spans with their raw logits. `bench/odqa_weights.py` scores ranking
//! variants on the dump.
//!
//! `cargo run --release --example odqa_candidates -- MODEL SQUAD.json OUT.jsonl [PASSAGES]`

use std::io::Write;

use bertqa::index::{Index, IndexSettings};
use bertqa::squad::SquadDataset;
use bertqa::{LoadOptions, QaParams, QaPipeline};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, data, out, rest @ ..] = args.as_slice() else {
        return Err("usage: odqa_candidates MODEL SQUAD.json OUT.jsonl [PASSAGES]".into());
    };
    let passages: usize = rest.first().map_or(Ok(10), |s| s.parse())?;
    let dataset = SquadDataset::from_file(data)?;
    let dir = std::env::temp_dir().join(format!("odqa-candidates-{}", std::process::id()));
    let mut index = Index::create(&dir, &IndexSettings::default())?;
    index.add(&[data], |_| {})?;
    let qa = QaPipeline::load(model, &LoadOptions::default())?;
    let mut writer = std::io::BufWriter::new(std::fs::File::create(out)?);
    for round in dataset.examples.chunks(64) {
        let retrievals = round
            .iter()
            .map(|e| index.search(&e.question, passages))
            .collect::<Result<Vec<_>, _>>()?;
        let questions: Vec<&str> = round.iter().map(|e| e.question.as_str()).collect();
        let hits: Vec<_> = retrievals.iter().map(|r| r.hits.as_slice()).collect();
        let read = qa.read_hits(&questions, &hits, &QaParams::default())?;
        for ((example, retrieval), spans) in round.iter().zip(&retrievals).zip(read) {
            let context: Vec<char> = example.context.chars().collect();
            let passages: Vec<_> = retrieval
                .hits
                .iter()
                .zip(spans)
                .map(|(hit, spans)| {
                    let p = &hit.passage;
                    let gold = context
                        .get(p.start..p.end)
                        .is_some_and(|c| c.iter().collect::<String>() == p.text);
                    let spans: Vec<_> = spans
                        .iter()
                        .map(|s| json!({"text": s.text, "logit": s.logit, "prob": s.probability}))
                        .collect();
                    json!({"bm25": hit.score, "gold": gold, "title": p.title, "spans": spans})
                })
                .collect();
            writeln!(
                writer,
                "{}",
                json!({"id": example.id, "title": example.title, "passages": passages})
            )?;
        }
    }
    drop(index);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
