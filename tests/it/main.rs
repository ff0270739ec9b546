//! The integration tests, as one test binary: linking a binary per file cost minutes per run.

mod common;

mod cli;
mod eval_cli;
mod fast_engine;
mod fpenv;
mod golden_arch_a;
mod golden_arch_b;
mod golden_bert;
mod golden_deberta;
mod golden_minilm;
mod index;
mod index_hostile;
mod int8;
mod properties;
mod reduced_precision;
mod registry;
mod robustness;
mod sentencepiece_fallback;
mod server;
mod train_cli;
mod train_parity;
mod train_resume;
