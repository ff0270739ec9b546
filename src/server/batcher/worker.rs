//! A model worker: runs one model call on the windows the scheduler picked, on a thread of the
//! pool, and reports each window's logits or error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::{BatchCost, BatchError, Runner};
use crate::engine::WindowLogits;
use crate::features::Window;
use crate::pipeline::Prepared;
use crate::server::metrics::Metrics;

/// One window of a model call.
pub(super) struct Item {
    /// The input's id in the scheduler's queue.
    pub id: u64,
    pub prepared: Arc<Prepared>,
    /// The window's index in `prepared.windows`.
    pub window: usize,
}

impl Item {
    pub fn window(&self) -> &Window {
        &self.prepared.windows[self.window]
    }
}

/// What became of one window of a call.
pub(super) struct WindowResult {
    pub id: u64,
    pub window: usize,
    pub logits: Result<WindowLogits, BatchError>,
}

/// What every model call needs; shared by the workers.
pub(super) struct Worker {
    pub runner: Runner,
    pub cost: BatchCost,
    pub metrics: Arc<Metrics>,
}

impl Worker {
    /// Runs `items` as one model call. When a call of several inputs fails, each input is run
    /// again alone, so that only the input that fails alone gets the error and its neighbours
    /// their logits.
    pub(super) fn run(&self, items: &[Item]) -> Vec<WindowResult> {
        let several_inputs = items.iter().any(|item| item.id != items[0].id);
        match self.call(items) {
            Ok(logits) => results(items, logits.into_iter().map(Ok)),
            Err(e) if several_inputs => {
                tracing::warn!(error = %e, windows = items.len(), "model call failed; retrying its inputs one by one");
                let mut out = Vec::with_capacity(items.len());
                let mut start = 0;
                while start < items.len() {
                    // An input's windows are adjacent: the scheduler takes them in order.
                    let id = items[start].id;
                    let end = start + items[start..].iter().take_while(|i| i.id == id).count();
                    out.extend(self.run_alone(&items[start..end]));
                    start = end;
                }
                out
            }
            Err(e) => self.failed(items, e),
        }
    }

    fn run_alone(&self, items: &[Item]) -> Vec<WindowResult> {
        match self.call(items) {
            Ok(logits) => results(items, logits.into_iter().map(Ok)),
            Err(e) => self.failed(items, e),
        }
    }

    fn failed(&self, items: &[Item], error: BatchError) -> Vec<WindowResult> {
        tracing::error!(error = %error, windows = items.len(), "model call failed");
        results(items, std::iter::repeat(Err(error)))
    }

    /// One model call; errors and panics become a [`BatchError`].
    fn call(&self, items: &[Item]) -> Result<Vec<WindowLogits>, BatchError> {
        let windows: Vec<&Window> = items.iter().map(Item::window).collect();
        let lengths: Vec<usize> = windows.iter().map(|w| w.len()).collect();
        self.metrics
            .record_batch(windows.len(), (self.cost)(&lengths));
        let start = std::time::Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| (self.runner)(&windows)));
        tracing::trace!(
            windows = windows.len(),
            tokens = lengths.iter().sum::<usize>(),
            ms = start.elapsed().as_secs_f64() * 1e3,
            "model call ended"
        );
        match outcome {
            Ok(Ok(logits)) if logits.len() == items.len() => Ok(logits),
            Ok(Ok(logits)) => Err(BatchError::Model(format!(
                "{} windows in, {} results out",
                items.len(),
                logits.len()
            ))),
            Ok(Err(e)) => Err(BatchError::Model(e.to_string())),
            Err(_) => Err(BatchError::Model("the model panicked".into())),
        }
    }
}

fn results(
    items: &[Item],
    logits: impl Iterator<Item = Result<WindowLogits, BatchError>>,
) -> Vec<WindowResult> {
    items
        .iter()
        .zip(logits)
        .map(|(item, logits)| WindowResult {
            id: item.id,
            window: item.window,
            logits,
        })
        .collect()
}
