//! Times answering questions one at a time, each alone, as `bertqa ask` answers one question
//! (tokenize, model, decode; the model load is not counted). For bench/load.sh, which compares
//! the server's latency at concurrency 1 with it.
//!
//! Usage: answer_latency MODEL_DIR QUESTIONS.jsonl [ROUNDS]
//! QUESTIONS.jsonl holds one `{"question", "context"}` per line (as `ask --input` reads);
//! prints the median and mean milliseconds per answer over ROUNDS passes (default 2; the first
//! question of the first pass is a warm-up and not counted).

use std::time::Instant;

use bertqa::{LoadOptions, QaPipeline, QaRequest};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(serde::Deserialize)]
struct Line {
    question: String,
    context: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: answer_latency MODEL_DIR QUESTIONS.jsonl [ROUNDS]";
    let model = args.get(1).ok_or(usage)?;
    let path = args.get(2).ok_or(usage)?;
    let rounds: usize = args.get(3).map_or(Ok(2), |s| s.parse())?;
    let requests = std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let line: Line = serde_json::from_str(l)?;
            Ok(QaRequest::new(line.question, line.context))
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    let first = requests.first().ok_or("no questions")?;
    let qa = QaPipeline::load(model, &LoadOptions::default())?;
    qa.answer_one(first)?;
    let mut millis = Vec::with_capacity(requests.len() * rounds);
    for _ in 0..rounds {
        for request in &requests {
            let t = Instant::now();
            qa.answer_one(request)?;
            millis.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    millis.sort_by(f64::total_cmp);
    let median = millis[millis.len() / 2];
    let mean = millis.iter().sum::<f64>() / millis.len() as f64;
    println!(
        "{} answers, one at a time: median {median:.2} ms, mean {mean:.2} ms",
        millis.len()
    );
    Ok(())
}
