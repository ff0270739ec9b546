//! The reference models in bf16 and f16, as `--dtype` runs them on a GPU, here on the CPU
//! (candle's CPU kernels take these types too): every architecture's golden windows give
//! transformers' f32 logits to within the type's precision.

use crate::common;

use bertqa::checkpoint::{self, HubOptions};
use bertqa::models::{self, ModelInput};
use candle_core::{DType, Device, Tensor};

/// Largest logit difference from transformers' f32 logits over every golden window of `arch`,
/// relative to the largest logit, with the model's weights and activations in `dtype`.
fn relative_logit_error(arch: &str, dtype: DType) -> f32 {
    let dir = common::fixture(arch);
    let files = checkpoint::locate(&dir.to_string_lossy(), &HubOptions::default()).unwrap();
    let config = checkpoint::read_json(&files.config).unwrap();
    let vb = checkpoint::open_weights(&files.weights, dtype, &Device::Cpu).unwrap();
    let (model, _) = models::build(&config, vb).unwrap();
    let golden = common::load_golden(&dir.join("golden.json"));
    let (mut worst, mut largest) = (0f32, 0f32);
    for feature in golden.cases.iter().flat_map(|c| &c.features) {
        let n = feature.input_ids.len();
        let row = |v: &[u32]| Tensor::from_slice(v, (1, n), &Device::Cpu).unwrap();
        let types = feature.token_type_ids.clone().unwrap_or_else(|| vec![0; n]);
        let input = ModelInput {
            input_ids: row(&feature.input_ids),
            token_type_ids: row(&types),
            attention_mask: row(&vec![1; n]),
        };
        let logits = model.forward(&input, false).unwrap();
        assert_eq!(
            logits.start.dtype(),
            dtype,
            "{arch}: the model computes in {dtype:?}"
        );
        for (got, want) in [
            (&logits.start, &feature.start_logits),
            (&logits.end, &feature.end_logits),
        ] {
            let got: Vec<f32> = got
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in got.iter().zip(want) {
                worst = worst.max((a - b).abs());
                largest = largest.max(b.abs());
            }
        }
    }
    worst / largest
}

#[test]
fn every_architecture_runs_in_bf16_within_its_precision() {
    let mut errors = Vec::new();
    for (arch, _) in &common::all_fixtures() {
        let e = relative_logit_error(arch, DType::BF16);
        eprintln!("{arch}: bf16 logits within {e:.2e} of the largest");
        // 8 significant bits: 2⁻⁸ ≈ 0.4% per rounding, a few roundings deep.
        if e > 0.03 {
            errors.push(format!("{arch}: {e:.3}"));
        }
    }
    assert!(errors.is_empty(), "bf16 logits too far: {errors:?}");
}

#[test]
fn every_architecture_runs_in_f16_within_its_precision() {
    let mut errors = Vec::new();
    for (arch, _) in &common::all_fixtures() {
        let e = relative_logit_error(arch, DType::F16);
        eprintln!("{arch}: f16 logits within {e:.2e} of the largest");
        // 11 significant bits: eight times finer than bf16.
        if e > 0.005 {
            errors.push(format!("{arch}: {e:.4}"));
        }
    }
    assert!(errors.is_empty(), "f16 logits too far: {errors:?}");
}
