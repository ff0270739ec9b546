//! Dynamic batching: windows of many requests share model calls, and several calls run at once.
//!
//! Handlers tokenize on worker threads and [`Batcher::enqueue`] the result. A scheduler thread
//! ([`scheduler`]) keeps the queue: it packs windows into model calls in turns over the inputs
//! (the first window of each input in arrival order, then the second of each, ...), at most an
//! eighth of `max_batch_tokens` of each input per call, so that a long input shares each call
//! with those that came after it rather than holding them up for all of its windows (or for
//! one outsized call), and hands each call to a model worker ([`worker`]), up to one call per
//! worker at a time. Each worker
//! has a one-thread pool of its own, so a call runs on one core while the others are busy with
//! calls of their own (the way `ask --input` runs its batches) and calls never wait on each
//! other. When nothing runs and one input is all that waits, its call runs alone on the whole
//! pool instead, where the engine's parallel loops spread it over every core (one request at a
//! time gets the latency of all cores).
//!
//! A call costs at most `max_batch_tokens` tokens as the engine counts them
//! ([`crate::Engine::batch_cost`]: the padded size for padded engines, the sum of lengths for
//! packed ones; one window always goes), and at most an even share over the workers of the work
//! there is, queued and running: workers free at once split the queue, and a worker freed beside
//! a small call takes more than one freed beside a large one, so that calls stay alike in size
//! and no input waits behind an outsized call. When
//! all of an input's windows are done, its logits go back through a oneshot channel. Inputs
//! whose receiver was dropped (the client went away) leave the queue before any more compute is
//! spent on them. Model compute never runs on the async runtime.

mod scheduler;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::engine::WindowLogits;
use crate::features::Window;
use crate::pipeline::Prepared;

/// Why an input got no logits.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The model call failed (or panicked); the message says how.
    #[error("model computation failed: {0}")]
    Model(String),
    /// The scheduler has stopped (the server is shutting down).
    #[error("the batcher has stopped")]
    Stopped,
}

/// The logits of one input's windows and how long it took.
#[derive(Debug)]
pub struct Computed {
    /// Start and end logits per window, in window order.
    pub logits: Vec<WindowLogits>,
    /// From enqueueing to the first model call that included one of its windows.
    pub queue_time: Duration,
    /// From that first model call to the end of the last one.
    pub inference_time: Duration,
}

/// What the batcher sends back for one input.
pub type Reply = Result<Computed, BatchError>;

/// Runs the model on windows as one batch; called from several workers at once.
pub type Runner = Arc<dyn Fn(&[&Window]) -> crate::error::Result<Vec<WindowLogits>> + Send + Sync>;

/// What a model call on windows of these lengths costs, in tokens computed.
pub type BatchCost = Arc<dyn Fn(&[usize]) -> usize + Send + Sync>;

/// How model calls are formed and where they run.
#[derive(Clone)]
pub struct BatchOptions {
    /// Most a model call may cost, in tokens as the engine counts them.
    pub max_batch_tokens: usize,
    /// Model calls running at once (one per core is what keeps every core busy), each on a
    /// one-thread pool of its own.
    pub workers: usize,
    /// The thread pool a call runs on when it runs alone over every core; `None` is rayon's
    /// global pool.
    pub pool: Option<Arc<rayon::ThreadPool>>,
}

impl BatchOptions {
    /// Calls of at most `max_batch_tokens`, one per thread of rayon's global pool.
    pub fn new(max_batch_tokens: usize) -> Self {
        Self {
            max_batch_tokens,
            workers: rayon::current_num_threads(),
            pool: None,
        }
    }
}

/// An input waiting for its logits.
struct Job {
    prepared: Arc<Prepared>,
    reply: oneshot::Sender<Reply>,
    enqueued: Instant,
}

/// Where a model call runs.
#[derive(Clone, Copy, Debug)]
enum Lane {
    /// The whole pool: the call's parallel loops spread over every core.
    Wide,
    /// A worker's own one-thread pool (its index): the call keeps to one core.
    Narrow(usize),
}

/// What the scheduler thread hears about.
enum Message {
    /// A new input.
    Job(Job),
    /// A model call ended: one result per window it held.
    Done {
        lane: Lane,
        results: Vec<worker::WindowResult>,
    },
    /// Every [`Batcher`] handle is gone: finish what is queued, then stop.
    Closed,
}

/// Handle to the scheduler's queue (cheap to clone). The scheduler finishes what is queued
/// and stops once every handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
}

struct Shared {
    queue: mpsc::Sender<Message>,
    metrics: Arc<Metrics>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.queue.send(Message::Closed);
    }
}

impl Batcher {
    /// Starts the scheduler thread; model calls run as `options` says.
    pub fn start(
        runner: Runner,
        cost: BatchCost,
        options: BatchOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let scheduler = scheduler::Scheduler::new(
            rx,
            tx.clone(),
            worker::Worker {
                runner,
                cost,
                metrics: metrics.clone(),
            },
            options,
        )?;
        std::thread::Builder::new()
            .name("bertqa-batcher".into())
            .spawn(move || scheduler.run())?;
        Ok(Self {
            shared: Arc::new(Shared { queue: tx, metrics }),
        })
    }

    /// Queues an input's windows; the receiver yields its logits. Dropping the receiver
    /// withdraws the input if it has not been computed yet.
    pub fn enqueue(&self, prepared: Arc<Prepared>) -> Result<oneshot::Receiver<Reply>, BatchError> {
        let (reply, rx) = oneshot::channel();
        let metrics = &self.shared.metrics;
        metrics.queue_size.inc();
        let job = Job {
            prepared,
            reply,
            enqueued: Instant::now(),
        };
        if self.shared.queue.send(Message::Job(job)).is_err() {
            metrics.queue_size.dec();
            return Err(BatchError::Stopped);
        }
        Ok(rx)
    }
}

/// How many of the next windows (given by their lengths, in queue order) fit into one call
/// costing at most `max_tokens` by `cost`. Always at least one when there is any.
pub fn windows_that_fit(
    lengths: impl IntoIterator<Item = usize>,
    max_tokens: usize,
    cost: &dyn Fn(&[usize]) -> usize,
) -> usize {
    let mut taken = Vec::new();
    for len in lengths {
        taken.push(len);
        if taken.len() > 1 && cost(&taken) > max_tokens {
            taken.pop();
            break;
        }
    }
    taken.len()
}
