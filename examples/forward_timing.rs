//! Times the model on full-length windows (for quick profiling and bench/compare.sh).
//!
//! Usage: forward_timing MODEL_DIR [SEQ] [BATCH] [ITERS]
//! BERTQA_ENGINE=reference times the reference models instead of the fast engine;
//! BERTQA_QUANTIZE=int8 times the fast engine with int8 linear layers.

use std::time::Instant;

use bertqa::Tokens;
use bertqa::{EngineChoice, LoadOptions, Precision, QaPipeline};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .ok_or("usage: forward_timing MODEL_DIR [SEQ] [BATCH] [ITERS]")?;
    let seq: usize = args.get(2).map_or(Ok(384), |s| s.parse())?;
    let batch: usize = args.get(3).map_or(Ok(1), |s| s.parse())?;
    let iters: usize = args.get(4).map_or(Ok(5), |s| s.parse())?;
    let engine = match std::env::var("BERTQA_ENGINE").as_deref() {
        Ok("reference") => EngineChoice::Reference,
        _ => EngineChoice::Auto,
    };
    let precision = match std::env::var("BERTQA_QUANTIZE").as_deref() {
        Ok("int8") => Precision::Int8,
        _ => Precision::F32,
    };
    let options = LoadOptions {
        engine,
        precision,
        ..LoadOptions::default()
    };
    let qa = QaPipeline::load(model, &options)?;
    let ids: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..seq)
                .map(|i| 1000 + ((b * seq + i) as u32 * 7919) % 20000)
                .collect()
        })
        .collect();
    let types = vec![0u32; seq];
    let windows: Vec<Tokens> = ids
        .iter()
        .map(|ids| Tokens {
            input_ids: ids,
            token_type_ids: &types,
        })
        .collect();
    qa.run_tokens(&windows)?;
    let t = Instant::now();
    for _ in 0..iters {
        qa.run_tokens(&windows)?;
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0 / iters as f64;
    let engine = match (qa.is_fast(), precision) {
        (true, Precision::Int8) => "fast int8",
        (true, Precision::F32) => "fast",
        (false, _) => "reference",
    };
    println!(
        "{model} ({engine}): seq {seq} batch {batch}: {ms:.1} ms per forward ({:.1} ms per sequence)",
        ms / batch as f64
    );
    Ok(())
}
