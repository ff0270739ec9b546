//! Subnormals are flushed while bertqa's entry points run on the caller's thread, and the
//! caller's floating-point settings are back when they return.

use crate::common;

use std::hint::black_box;
use std::ops::ControlFlow;

use bertqa::fpenv::{self, flushing};
use bertqa::train::{self, StepReport, TrainObserver, TrainOptions};
use bertqa::QaRequest;
use candle_core::Device;

/// Whether this build flushes at all (x86_64, `BERTQA_KEEP_SUBNORMALS` unset).
fn flushes() -> bool {
    cfg!(target_arch = "x86_64") && !fpenv::keep_subnormals()
}

/// A subnormal operand times one: itself where subnormals are kept, 0 where flushed.
fn subnormal_product() -> f32 {
    black_box(black_box(1e-39f32) * black_box(1.0f32))
}

/// Runs `f` on a fresh thread (whose MXCSR no other test has touched).
fn on_fresh_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("test thread panicked")
}

#[test]
fn pipeline_calls_give_the_caller_its_settings_back() {
    on_fresh_thread(|| {
        let qa = common::load_pipeline(&common::fixture("bert-uncased"));
        let request = QaRequest::new("Who won?", "Marie Curie won the Nobel Prize in 1903.");
        assert!(!flushing());
        qa.answer_one(&request).unwrap();
        assert!(!flushing(), "answer_one left the flush set");
        assert!(subnormal_product() != 0.0);

        // A caller that flushes already keeps flushing.
        let before = fpenv::set_flush(true);
        qa.answer_one(&request).unwrap();
        let windows = qa.prepare(&request).unwrap();
        let windows: Vec<_> = windows.windows.iter().collect();
        qa.run_windows(&windows).unwrap();
        assert_eq!(flushing(), cfg!(target_arch = "x86_64"));
        fpenv::set_flush(before & fpenv::FLUSH_BITS != 0);
        assert!(!flushing());
    });
}

/// Records whether the calling thread flushed subnormals at each step.
struct Record(Vec<bool>);

impl TrainObserver for Record {
    fn step(&mut self, _: &StepReport) -> ControlFlow<()> {
        self.0.push(flushing());
        ControlFlow::Continue(())
    }
}

#[test]
fn training_flushes_on_the_caller_and_restores_it() {
    let dir = common::TempDir::new("fpenv-train");
    let context = "The Normans gave their name to Normandy, a region in France.";
    let data = serde_json::json!({"version": "1.1", "data": [{"title": "Normans", "paragraphs": [
    {"context": context, "qas": [
        {"id": "n1", "question": "Where is Normandy?",
         "answers": [{"text": "France", "answer_start": context.find("France").unwrap()}]},
        {"id": "n2", "question": "Who named Normandy?",
         "answers": [{"text": "The Normans", "answer_start": 0}]}
    ]}]}]});
    let train_data = dir.join("train.json");
    std::fs::write(&train_data, data.to_string()).unwrap();
    let options = TrainOptions {
        model: common::fixture("bert-uncased")
            .to_string_lossy()
            .into_owned(),
        train_data,
        output: dir.join("out"),
        batch_size: 2,
        max_seq_len: 48,
        doc_stride: 16,
        max_steps: Some(2),
        device: Device::Cpu,
        ..TrainOptions::default()
    };
    let seen = on_fresh_thread(move || {
        let mut record = Record(Vec::new());
        train::train(&options, &mut record).unwrap();
        assert!(!flushing(), "train left the flush set on its caller");
        assert!(subnormal_product() != 0.0);
        record.0
    });
    assert_eq!(
        seen,
        vec![flushes(); 2],
        "the caller's thread during the steps"
    );
}
