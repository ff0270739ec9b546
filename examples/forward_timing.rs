//! Times one forward pass of a checkpoint on a full-length window (for quick profiling).
//! Usage: cargo run --release --example forward_timing -- MODEL_DIR [SEQ] [BATCH] [ITERS]

use std::time::Instant;

use bertqa::{LoadOptions, QaPipeline};
use candle_core::{Device, Tensor};

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
    let qa = QaPipeline::load(model, &LoadOptions::default())?;
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| 1000 + (i as u32 * 7919) % 20000)
        .collect();
    let input = bertqa::models::ModelInput {
        input_ids: Tensor::from_vec(ids, (batch, seq), &Device::Cpu)?,
        token_type_ids: Tensor::zeros((batch, seq), candle_core::DType::U32, &Device::Cpu)?,
        attention_mask: Tensor::ones((batch, seq), candle_core::DType::U32, &Device::Cpu)?,
    };
    qa.model().forward(&input, false)?;
    let t = Instant::now();
    for _ in 0..iters {
        qa.model().forward(&input, false)?;
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0 / iters as f64;
    println!(
        "{model}: seq {seq} batch {batch}: {ms:.1} ms per forward ({:.1} ms per sequence)",
        ms / batch as f64
    );
    Ok(())
}
