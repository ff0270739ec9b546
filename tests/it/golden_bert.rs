//! Golden parity for BERT checkpoints: windows, logits and answers equal to transformers'.

use crate::common;

#[test]
fn bert_uncased_matches_transformers() {
    common::check_fixture("bert-uncased");
}

#[test]
fn bert_uncased_pytorch_bin_matches_transformers() {
    common::check_fixture("bert-uncased-pytorch-bin");
}

/// A pipeline built from weights in memory (as training's per-epoch evaluation builds it)
/// passes the golden cases on both engines.
#[test]
fn pipeline_from_tensors_matches_transformers() {
    use bertqa::{checkpoint, EngineChoice, LoadOptions, QaPipeline};
    let dir = common::fixture("bert-uncased");
    let files = checkpoint::locate(dir.to_str().unwrap(), &Default::default()).unwrap();
    let config = checkpoint::read_json(&files.config).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let golden = common::load_golden(&dir.join("golden.json"));
    for engine in [EngineChoice::Auto, EngineChoice::Reference] {
        let options = LoadOptions {
            engine,
            ..LoadOptions::default()
        };
        let qa =
            QaPipeline::from_tensors(files.clone(), &config, tensors.clone(), &options).unwrap();
        assert_eq!(qa.is_fast(), engine == EngineChoice::Auto);
        let errors: Vec<String> = golden
            .cases
            .iter()
            .flat_map(|c| common::check_case(&qa, c))
            .collect();
        assert!(errors.is_empty(), "{engine:?}: {}", errors.join("\n"));
    }
}
