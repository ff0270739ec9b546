//! Golden parity for BERT checkpoints: windows, logits and answers equal to transformers'.

mod common;

#[test]
fn bert_uncased_matches_transformers() {
    common::check_fixture("bert-uncased");
}

#[test]
fn bert_uncased_pytorch_bin_matches_transformers() {
    common::check_fixture("bert-uncased-pytorch-bin");
}
