//! The batcher's tests. Those about one queue's order run one worker (`one_worker`); those
//! about workers running side by side run on a pool of their own.

use super::*;
use crate::pipeline::{LoadOptions, QaPipeline, QaRequest};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

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

/// One model call at a time, of at most `max_batch_tokens`.
fn one_worker(max_batch_tokens: usize) -> BatchOptions {
    BatchOptions {
        max_batch_tokens,
        workers: 1,
        pool: None,
    }
}

/// A model that computes nothing: zero logits per token.
fn zeros(w: &[&Window]) -> crate::error::Result<Vec<WindowLogits>> {
    Ok(w.iter()
        .map(|w| (vec![0.0; w.len()], vec![0.0; w.len()]))
        .collect())
}

fn pipeline() -> QaPipeline {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/bert-uncased");
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
    let runner: Runner = Arc::new(move |w: &[&Window]| {
        runner_calls.lock().unwrap().push(w.len());
        runner_qa.run_windows(w)
    });
    let metrics = Arc::new(Metrics::default());
    let batcher =
        Batcher::start(runner, Arc::new(padded), one_worker(100), metrics.clone()).unwrap();
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
    let gate_rx = Mutex::new(gate_rx);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let runner_seen = seen.clone();
    let runner: Runner = Arc::new(move |w: &[&Window]| {
        runner_seen.lock().unwrap().push(w.len());
        // Hold the only worker until the test has queued and withdrawn the second input.
        let _ = gate_rx.lock().unwrap().recv();
        zeros(w)
    });
    let metrics = Arc::new(Metrics::default());
    let batcher =
        Batcher::start(runner, Arc::new(padded), one_worker(16384), metrics.clone()).unwrap();
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
    let gate_rx = Mutex::new(gate_rx);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let runner_calls = calls.clone();
    let runner: Runner = Arc::new(move |w: &[&Window]| {
        let first = {
            let mut calls = runner_calls.lock().unwrap();
            calls.push(w.len());
            calls.len() == 1
        };
        if first {
            let _ = gate_rx.lock().unwrap().recv();
        }
        if w.iter().any(|w| w.len() > 30) {
            return Err(crate::Error::InvalidInput("too long".into()));
        }
        zeros(w)
    });
    let batcher = Batcher::start(
        runner,
        Arc::new(padded),
        one_worker(1 << 20),
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
    let calls = AtomicUsize::new(0);
    let runner: Runner = Arc::new(move |w: &[&Window]| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("simulated failure");
        }
        zeros(w)
    });
    let batcher = Batcher::start(
        runner,
        Arc::new(padded),
        one_worker(16384),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    let rx1 = batcher.enqueue(prepared(&qa, 384)).unwrap();
    let err = rx1.blocking_recv().unwrap().unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
    let rx2 = batcher.enqueue(prepared(&qa, 384)).unwrap();
    assert!(rx2.blocking_recv().unwrap().is_ok());
}

/// A latch the model calls of a test wait on.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn wait(&self) {
        let open = self.open.lock().unwrap();
        let _open = self.changed.wait_while(open, |open| !*open).unwrap();
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

/// Two workers on a pool of their own.
fn two_workers(max_batch_tokens: usize) -> BatchOptions {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    BatchOptions {
        max_batch_tokens,
        workers: 2,
        pool: Some(Arc::new(pool)),
    }
}

fn one_window(qa: &QaPipeline) -> Arc<Prepared> {
    let p = prepared(qa, 384);
    assert_eq!(p.windows.len(), 1);
    p
}

/// A model of two workers that records each call (windows, threads of the pool it runs on)
/// and holds call `n` (counted from 1) until `gates[n]` opens.
struct Recorder {
    calls: Mutex<Vec<(usize, usize)>>,
    gates: Vec<Gate>,
}

impl Recorder {
    fn new(held: usize) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            gates: (0..=held).map(|_| Gate::default()).collect(),
        })
    }

    fn runner(self: &Arc<Self>) -> Runner {
        let recorder = self.clone();
        Arc::new(move |w: &[&Window]| {
            let n = {
                let mut calls = recorder.calls.lock().unwrap();
                calls.push((w.len(), rayon::current_num_threads()));
                calls.len()
            };
            if let Some(gate) = recorder.gates.get(n) {
                gate.wait();
            }
            zeros(w)
        })
    }

    fn open(&self, n: usize) {
        self.gates[n].open();
    }

    fn calls(&self) -> Vec<(usize, usize)> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until `n` calls have started.
    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.calls.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "call {n} never started: {:?}",
                self.calls()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Every window costs one token: shares count windows.
fn per_window(lengths: &[usize]) -> usize {
    lengths.len()
}

/// An input that arrives when nothing runs gets the whole pool (every core), and no call starts
/// beside it; what queued meanwhile then runs as calls side by side, one core each.
#[test]
fn an_input_alone_gets_every_core_then_workers_run_side_by_side() {
    let qa = Arc::new(pipeline());
    let recorder = Recorder::new(1);
    let batcher = Batcher::start(
        recorder.runner(),
        Arc::new(per_window),
        two_workers(1000),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    let first = batcher.enqueue(one_window(&qa)).unwrap();
    recorder.wait_for(1);
    assert_eq!(recorder.calls(), [(1, 2)], "one window on both threads");
    let queued: Vec<_> = (0..4)
        .map(|_| batcher.enqueue(one_window(&qa)).unwrap())
        .collect();
    // Time for the scheduler to (wrongly) start a call beside the one running.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(recorder.calls().len(), 1, "{:?}", recorder.calls());
    recorder.open(1);
    for rx in std::iter::once(first).chain(queued) {
        assert!(rx.blocking_recv().unwrap().is_ok());
    }
    // The four split over both workers, each call on a pool of one thread.
    assert_eq!(recorder.calls(), [(1, 2), (2, 1), (2, 1)]);
}

/// A worker freed while another runs takes an even share over the workers of the work queued
/// and running: more than half the queue beside a small call, less than all of it beside a
/// large one.
#[test]
fn a_freed_worker_takes_its_share_of_the_work_queued_and_running() {
    let qa = Arc::new(pipeline());
    let recorder = Recorder::new(4);
    let metrics = Arc::new(Metrics::default());
    let batcher = Batcher::start(
        recorder.runner(),
        Arc::new(per_window),
        two_workers(1000),
        metrics.clone(),
    )
    .unwrap();
    let mut receivers = vec![batcher.enqueue(one_window(&qa)).unwrap()];
    let mut enqueue = |n: usize| {
        for _ in 0..n {
            receivers.push(batcher.enqueue(one_window(&qa)).unwrap());
        }
    };
    recorder.wait_for(1);
    enqueue(4);
    recorder.open(1);
    // Calls 2 and 3 (two windows each) hold both workers while six more queue.
    recorder.wait_for(3);
    enqueue(6);
    recorder.open(3);
    // 6 queued + 2 running over 2 workers: call 4 takes 4 of the 6.
    recorder.wait_for(4);
    enqueue(4);
    recorder.open(2);
    // 6 queued + 4 running: call 5 takes 5 of the 6, not all.
    recorder.wait_for(5);
    recorder.open(4);
    for rx in receivers {
        assert!(rx.blocking_recv().unwrap().is_ok());
    }
    let windows: Vec<usize> = recorder.calls().iter().map(|c| c.0).collect();
    assert_eq!(windows[..5], [1, 2, 2, 4, 5], "{windows:?}");
    assert_eq!(windows.iter().sum::<usize>(), 15, "{windows:?}");
    assert_eq!(metrics.queue_size.get(), 0);
}

/// Dropping every handle lets the queued inputs finish before the scheduler stops.
#[test]
fn dropping_the_batcher_finishes_what_is_queued() {
    let qa = Arc::new(pipeline());
    let gate = Arc::new(Gate::default());
    let runner_gate = gate.clone();
    let runner: Runner = Arc::new(move |w: &[&Window]| {
        runner_gate.wait();
        zeros(w)
    });
    let batcher = Batcher::start(
        runner,
        Arc::new(packed),
        two_workers(16384),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    let receivers: Vec<_> = (0..3)
        .map(|_| batcher.enqueue(prepared(&qa, 24)).unwrap())
        .collect();
    drop(batcher);
    gate.open();
    for rx in receivers {
        let computed = rx.blocking_recv().unwrap().unwrap();
        assert!(computed.logits.len() > 2);
    }
}

/// An input queued behind a long one goes into the next call, beside the long one's next
/// windows, instead of waiting for all of them; each input's windows still come in order.
#[test]
fn a_short_input_shares_the_next_call_with_a_long_one() {
    let qa = Arc::new(pipeline());
    let mut request = QaRequest::new(
        "Who founded the company?",
        "The company was founded in 1998 by two students. ".repeat(12),
    );
    request.params.max_seq_len = Some(24);
    request.params.doc_stride = Some(8);
    let long = Arc::new(qa.prepare(&request).unwrap());
    let short = one_window(&qa);
    let short_len = short.windows[0].len();
    assert!(long.windows.len() >= 6, "the test needs a long input");
    assert!(long.windows.iter().all(|w| w.len() < short_len));
    let gate = Arc::new(Gate::default());
    let calls = Arc::new(Mutex::new(Vec::<Vec<usize>>::new()));
    let (runner_gate, runner_calls) = (gate.clone(), calls.clone());
    let runner: Runner = Arc::new(move |w: &[&Window]| {
        let first = {
            let mut calls = runner_calls.lock().unwrap();
            calls.push(w.iter().map(|w| w.len()).collect());
            calls.len() == 1
        };
        if first {
            runner_gate.wait();
        }
        zeros(w)
    });
    let metrics = Arc::new(Metrics::default());
    // Two windows per call, one call at a time.
    let batcher =
        Batcher::start(runner, Arc::new(per_window), one_worker(2), metrics.clone()).unwrap();
    let rx_long = batcher.enqueue(long.clone()).unwrap();
    while calls.lock().unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let rx_short = batcher.enqueue(short).unwrap();
    gate.open();
    let computed = rx_long.blocking_recv().unwrap().unwrap();
    for (w, (start, _)) in long.windows.iter().zip(&computed.logits) {
        assert_eq!(
            start.len(),
            w.len(),
            "the long input's windows out of order"
        );
    }
    assert_eq!(rx_short.blocking_recv().unwrap().unwrap().logits.len(), 1);
    let calls = calls.lock().unwrap();
    // A call takes a slice of an input (an eighth of max_batch_tokens, one window at least).
    assert_eq!(calls[0].len(), 1, "{calls:?}");
    assert!(calls[1].contains(&short_len), "{calls:?}");
    assert_eq!(
        calls.iter().map(Vec::len).sum::<usize>(),
        long.windows.len() + 1
    );
    assert_eq!(metrics.queue_size.get(), 0);
}
