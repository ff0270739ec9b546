//! Dynamic batching: windows of many requests share model calls.
//!
//! Handlers tokenize on worker threads and [`Batcher::enqueue`] the result. One model thread
//! drains the queue, packs windows in arrival order into a call that costs at most
//! `max_batch_tokens` tokens as the engine counts them ([`crate::Engine::batch_cost`]: the
//! padded size for padded engines, the sum of lengths for packed ones; one window always goes),
//! runs the model and, when all of an input's windows are done, hands its logits back through a
//! oneshot channel. Inputs whose
//! receiver was dropped (the client went away) leave the queue before any compute is spent on
//! them. Model compute runs only on that thread, never on the async runtime.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
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
    /// The model thread has stopped (server shutting down or crashed).
    #[error("the model thread has stopped")]
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

/// What the model thread sends back for one input.
pub type Reply = Result<Computed, BatchError>;

/// Runs the model on windows as one batch.
pub type Runner = Box<dyn FnMut(&[&Window]) -> crate::error::Result<Vec<WindowLogits>> + Send>;

/// What a model call on windows of these lengths costs, in tokens computed.
pub type BatchCost = Box<dyn Fn(&[usize]) -> usize + Send>;

struct Job {
    prepared: Arc<Prepared>,
    reply: oneshot::Sender<Reply>,
    enqueued: Instant,
}

/// A job being worked on by the model thread.
struct Active {
    job: Job,
    /// Index of the next window to compute.
    next: usize,
    logits: Vec<WindowLogits>,
    first_call: Option<Instant>,
    failed: Option<BatchError>,
}

/// Handle to the model thread's queue (cheap to clone).
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts the model thread. It stops once every handle is dropped and its queue is empty.
    pub fn start(
        runner: Runner,
        cost: BatchCost,
        max_batch_tokens: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let loop_metrics = metrics.clone();
        let budget = Budget {
            cost,
            max_tokens: max_batch_tokens.max(1),
        };
        std::thread::Builder::new()
            .name("bertqa-model".into())
            .spawn(move || model_loop(runner, rx, &budget, &loop_metrics))?;
        Ok(Self { queue: tx, metrics })
    }

    /// Queues an input's windows; the receiver yields its logits. Dropping the receiver
    /// withdraws the input if it has not been computed yet.
    pub fn enqueue(&self, prepared: Arc<Prepared>) -> Result<oneshot::Receiver<Reply>, BatchError> {
        let (reply, rx) = oneshot::channel();
        self.metrics.queue_size.inc();
        let job = Job {
            prepared,
            reply,
            enqueued: Instant::now(),
        };
        if self.queue.send(job).is_err() {
            self.metrics.queue_size.dec();
            return Err(BatchError::Stopped);
        }
        Ok(rx)
    }
}

/// The most a model call may cost.
struct Budget {
    cost: BatchCost,
    max_tokens: usize,
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

fn model_loop(mut runner: Runner, rx: mpsc::Receiver<Job>, budget: &Budget, metrics: &Metrics) {
    let mut active: VecDeque<Active> = VecDeque::new();
    while receive(&rx, &mut active) {
        drop_departed(&mut active, metrics);
        let picks = next_batch(&active, budget);
        if !picks.is_empty() {
            run_batch(&mut runner, &mut active, &picks, budget, metrics);
        }
        // Inputs without windows are complete as they are.
        finish_done(&mut active, metrics);
    }
}

/// Moves queued jobs into `active`, waiting for one when there is no work; false once every
/// handle is dropped and nothing is left (shut down).
fn receive(rx: &mpsc::Receiver<Job>, active: &mut VecDeque<Active>) -> bool {
    let activate = |job: Job| Active {
        logits: Vec::with_capacity(job.prepared.windows.len()),
        job,
        next: 0,
        first_call: None,
        failed: None,
    };
    if active.is_empty() {
        match rx.recv() {
            Ok(job) => active.push_back(activate(job)),
            Err(_) => return false,
        }
    }
    while let Ok(job) = rx.try_recv() {
        active.push_back(activate(job));
    }
    true
}

/// Drops the inputs of clients that went away, before any compute is spent on them.
fn drop_departed(active: &mut VecDeque<Active>, metrics: &Metrics) {
    active.retain(|a| {
        let gone = a.job.reply.is_closed();
        if gone {
            metrics.record_cancelled();
            metrics.queue_size.dec();
        }
        !gone
    });
}

/// The windows of the next model call, in queue order, as (input, window) indices.
fn next_batch(active: &VecDeque<Active>, budget: &Budget) -> Vec<(usize, usize)> {
    let pending = active
        .iter()
        .enumerate()
        .flat_map(|(i, a)| (a.next..a.job.prepared.windows.len()).map(move |w| (i, w)));
    let lengths = pending
        .clone()
        .map(|(i, w)| active[i].job.prepared.windows[w].len());
    let count = windows_that_fit(lengths, budget.max_tokens, &budget.cost);
    pending.take(count).collect()
}

/// Runs one model call on `picks` and hands the logits to their inputs. When a call of
/// several inputs fails, each input is run again alone, so that only the input that fails
/// alone gets the error and its neighbours their answers.
fn run_batch(
    runner: &mut Runner,
    active: &mut VecDeque<Active>,
    picks: &[(usize, usize)],
    budget: &Budget,
    metrics: &Metrics,
) {
    let started = Instant::now();
    for &(i, _) in picks {
        active[i].first_call.get_or_insert(started);
    }
    match call(runner, active, picks, budget, metrics) {
        Ok(logits) => deliver(active, picks, logits),
        Err(e) if picks.iter().any(|&(i, _)| i != picks[0].0) => {
            tracing::warn!(error = %e, windows = picks.len(), "model call failed; retrying its inputs one by one");
            let mut inputs: Vec<usize> = picks.iter().map(|&(i, _)| i).collect();
            inputs.dedup();
            for input in inputs {
                let own: Vec<(usize, usize)> =
                    picks.iter().copied().filter(|&(i, _)| i == input).collect();
                match call(runner, active, &own, budget, metrics) {
                    Ok(logits) => deliver(active, &own, logits),
                    Err(e) => fail(active, &own, e),
                }
            }
        }
        Err(e) => fail(active, picks, e),
    }
}

/// One model call on the windows `picks`; errors and panics become a [`BatchError`].
fn call(
    runner: &mut Runner,
    active: &VecDeque<Active>,
    picks: &[(usize, usize)],
    budget: &Budget,
    metrics: &Metrics,
) -> Result<Vec<WindowLogits>, BatchError> {
    let windows: Vec<&Window> = picks
        .iter()
        .map(|&(i, w)| &active[i].job.prepared.windows[w])
        .collect();
    let lengths: Vec<usize> = windows.iter().map(|w| w.len()).collect();
    metrics.record_batch(windows.len(), (budget.cost)(&lengths));
    match catch_unwind(AssertUnwindSafe(|| runner(&windows))) {
        Ok(Ok(logits)) if logits.len() == picks.len() => Ok(logits),
        Ok(Ok(logits)) => Err(BatchError::Model(format!(
            "{} windows in, {} results out",
            picks.len(),
            logits.len()
        ))),
        Ok(Err(e)) => Err(BatchError::Model(e.to_string())),
        Err(_) => Err(BatchError::Model("the model panicked".into())),
    }
}

/// Hands each window's logits to its input (windows are taken in order, so pushing keeps them
/// in order).
fn deliver(active: &mut VecDeque<Active>, picks: &[(usize, usize)], logits: Vec<WindowLogits>) {
    for (&(i, w), l) in picks.iter().zip(logits) {
        active[i].logits.push(l);
        active[i].next = w + 1;
    }
}

/// Marks the inputs of `picks` failed with `error`.
fn fail(active: &mut VecDeque<Active>, picks: &[(usize, usize)], error: BatchError) {
    tracing::error!(error = %error, windows = picks.len(), "model call failed");
    for &(i, _) in picks {
        active[i].failed = Some(error.clone());
    }
}

/// Sends the replies of inputs that are complete or failed and removes them.
fn finish_done(active: &mut VecDeque<Active>, metrics: &Metrics) {
    let now = Instant::now();
    let mut i = 0;
    while i < active.len() {
        let a = &active[i];
        if a.failed.is_none() && a.next < a.job.prepared.windows.len() {
            i += 1;
            continue;
        }
        let Some(a) = active.remove(i) else { break };
        metrics.queue_size.dec();
        let reply = match a.failed {
            Some(e) => Err(e),
            None => {
                let first = a.first_call.unwrap_or(now);
                let computed = Computed {
                    logits: a.logits,
                    queue_time: first.saturating_duration_since(a.job.enqueued),
                    inference_time: now.saturating_duration_since(first),
                };
                metrics.record_input(computed.queue_time, computed.inference_time);
                Ok(computed)
            }
        };
        // The client may have gone in the meantime; nothing to do then.
        let _ = a.job.reply.send(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{LoadOptions, QaPipeline, QaRequest};
    use std::sync::Mutex;

    fn padded(lengths: &[usize]) -> usize {
        lengths.iter().max().copied().unwrap_or(0) * lengths.len()
    }

    fn packed(lengths: &[usize]) -> usize {
        lengths.iter().sum()
    }

    #[test]
    fn packs_windows_up_to_the_padded_token_budget() {
        assert_eq!(windows_that_fit([], 100, &padded), 0);
        // One window always goes, even over the budget.
        assert_eq!(windows_that_fit([500, 10], 100, &padded), 1);
        // 4 × 25 = 100 fits; a fifth would make 125.
        assert_eq!(windows_that_fit([25; 8], 100, &padded), 4);
        // Padding counts: after a 40-token window, 3 × 40 = 120 > 100.
        assert_eq!(windows_that_fit([10, 40, 10], 100, &padded), 2);
        assert_eq!(windows_that_fit([10, 10, 10, 60], 100, &padded), 3);
    }

    #[test]
    fn packed_engines_are_budgeted_by_the_sum_of_lengths() {
        // 10 + 40 + 10 + 40 = 100 fits unpadded, where padding would allow only two.
        assert_eq!(windows_that_fit([10, 40, 10, 40, 5], 100, &packed), 4);
        assert_eq!(windows_that_fit([500, 10], 100, &packed), 1);
        assert_eq!(windows_that_fit([30, 30, 30, 11], 100, &packed), 3);
    }

    fn pipeline() -> QaPipeline {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/bert-uncased");
        QaPipeline::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
    }

    fn prepared(qa: &QaPipeline, max_seq_len: usize) -> Arc<Prepared> {
        let mut req = QaRequest::new(
            "Who founded the company?",
            "The company was founded in 1998 by two students. It grew quickly and moved to a \
             larger office in the city centre after a few years of steady work.",
        );
        req.params.max_seq_len = Some(max_seq_len);
        req.params.doc_stride = Some(8);
        Arc::new(qa.prepare(&req).unwrap())
    }

    /// Batched results are the logits each window gets when run alone.
    #[test]
    fn batched_logits_equal_unbatched_ones() {
        let qa = Arc::new(pipeline());
        let inputs = [prepared(&qa, 24), prepared(&qa, 40), prepared(&qa, 384)];
        assert!(
            inputs[0].windows.len() > 2,
            "the test needs several windows"
        );
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (runner_qa, runner_calls) = (qa.clone(), calls.clone());
        let runner: Runner = Box::new(move |w: &[&Window]| {
            runner_calls.lock().unwrap().push(w.len());
            runner_qa.run_windows(w)
        });
        let metrics = Arc::new(Metrics::default());
        let batcher = Batcher::start(runner, Box::new(padded), 100, metrics.clone()).unwrap();
        let receivers: Vec<_> = inputs
            .iter()
            .map(|p| batcher.enqueue(p.clone()).unwrap())
            .collect();
        for (p, rx) in inputs.iter().zip(receivers) {
            let got = rx.blocking_recv().unwrap().unwrap();
            assert_eq!(got.logits.len(), p.windows.len());
            for (w, (s, e)) in p.windows.iter().zip(&got.logits) {
                let alone = qa.run_windows(&[w]).unwrap().pop().unwrap();
                let diff = s
                    .iter()
                    .zip(&alone.0)
                    .chain(e.iter().zip(&alone.1))
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert_eq!(s.len(), w.len());
                assert!(diff < 1e-4, "batched logits differ by {diff}");
            }
        }
        let calls = calls.lock().unwrap();
        let total: usize = calls.iter().sum();
        assert_eq!(total, inputs.iter().map(|p| p.windows.len()).sum::<usize>());
        assert!(
            calls.iter().any(|&n| n > 1),
            "windows were never batched: {calls:?}"
        );
        assert_eq!(metrics.queue_size.get(), 0);
    }

    /// An input whose receiver is dropped while it waits is never computed.
    #[test]
    fn inputs_of_departed_clients_are_dropped_before_compute() {
        let qa = Arc::new(pipeline());
        let first = prepared(&qa, 384);
        let second = prepared(&qa, 24);
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let runner_seen = seen.clone();
        let runner: Runner = Box::new(move |w: &[&Window]| {
            runner_seen.lock().unwrap().push(w.len());
            // Hold the model thread until the test has queued and withdrawn the second input.
            let _ = gate_rx.recv();
            Ok(w.iter()
                .map(|w| (vec![0.0; w.len()], vec![0.0; w.len()]))
                .collect())
        });
        let metrics = Arc::new(Metrics::default());
        let batcher = Batcher::start(runner, Box::new(padded), 16384, metrics.clone()).unwrap();
        let rx1 = batcher.enqueue(first).unwrap();
        // Wait until the first call is running.
        while seen.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let rx2 = batcher.enqueue(second).unwrap();
        drop(rx2);
        gate_tx.send(()).unwrap();
        assert!(rx1.blocking_recv().unwrap().is_ok());
        // A third input goes through; by then the second has been looked at and dropped.
        let rx3 = batcher.enqueue(prepared(&qa, 384)).unwrap();
        gate_tx.send(()).unwrap();
        assert!(rx3.blocking_recv().unwrap().is_ok());
        assert_eq!(*seen.lock().unwrap(), vec![1, 1]);
        assert!(metrics
            .render()
            .contains("bertqa_cancelled_inputs_total 1\n"));
        assert_eq!(metrics.queue_size.get(), 0);
    }

    /// A call that fails because of one input is retried input by input: that input gets the
    /// error, the inputs batched with it their logits.
    #[test]
    fn an_input_that_fails_does_not_fail_its_neighbours() {
        let qa = Arc::new(pipeline());
        // Windows longer than 30 tokens stand for a request the model cannot run.
        let (good, bad) = (prepared(&qa, 24), prepared(&qa, 384));
        assert!(bad.windows.iter().any(|w| w.len() > 30));
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let runner_calls = calls.clone();
        let runner: Runner = Box::new(move |w: &[&Window]| {
            let first = {
                let mut calls = runner_calls.lock().unwrap();
                calls.push(w.len());
                calls.len() == 1
            };
            if first {
                let _ = gate_rx.recv();
            }
            if w.iter().any(|w| w.len() > 30) {
                return Err(crate::Error::InvalidInput("too long".into()));
            }
            Ok(w.iter()
                .map(|w| (vec![0.0; w.len()], vec![0.0; w.len()]))
                .collect())
        });
        let batcher = Batcher::start(
            runner,
            Box::new(padded),
            1 << 20,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let first = batcher.enqueue(good.clone()).unwrap();
        while calls.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Queued while the first call runs, so that they share the next one.
        let receivers: Vec<_> = [good.clone(), bad, good.clone()]
            .into_iter()
            .map(|p| batcher.enqueue(p).unwrap())
            .collect();
        gate_tx.send(()).unwrap();
        assert!(first.blocking_recv().unwrap().is_ok());
        let replies: Vec<_> = receivers
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap())
            .collect();
        assert_eq!(
            replies[0].as_ref().unwrap().logits.len(),
            good.windows.len()
        );
        assert!(replies[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("too long"));
        assert_eq!(
            replies[2].as_ref().unwrap().logits.len(),
            good.windows.len()
        );
        let calls = calls.lock().unwrap();
        assert!(
            calls[1] > good.windows.len() + 1,
            "the three inputs never shared a call: {calls:?}"
        );
    }

    #[test]
    fn a_failing_model_call_fails_its_inputs_only() {
        let qa = Arc::new(pipeline());
        let mut calls = 0;
        let runner: Runner = Box::new(move |w: &[&Window]| {
            calls += 1;
            if calls == 1 {
                panic!("simulated failure");
            }
            Ok(w.iter()
                .map(|w| (vec![0.0; w.len()], vec![0.0; w.len()]))
                .collect())
        });
        let batcher = Batcher::start(
            runner,
            Box::new(padded),
            16384,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let rx1 = batcher.enqueue(prepared(&qa, 384)).unwrap();
        let err = rx1.blocking_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        let rx2 = batcher.enqueue(prepared(&qa, 384)).unwrap();
        assert!(rx2.blocking_recv().unwrap().is_ok());
    }
}
