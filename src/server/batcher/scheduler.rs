//! The scheduler thread: keeps the queue of inputs, forms model calls and hands them to idle
//! workers, collects their logits and answers each input once all its windows are done.
//!
//! A call runs in one of two lanes. Narrow: on a worker's own one-thread pool, so that calls
//! side by side each keep to their core and never wait on each other (on one shared pool, a
//! thread waiting inside its call's parallel loop picks up a whole other call and finishes it
//! first, which made the latency tail). Wide: on the whole pool, when one input is all there
//! is to do and nothing runs, so that it gets every core; no other call starts beside it.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use super::worker::{Item, WindowResult, Worker};
use super::{windows_that_fit, BatchError, BatchOptions, Computed, Job, Lane, Message};
use crate::engine::WindowLogits;

/// A call holds at most this share of `max_batch_tokens` from one input.
const SLICES: usize = 8;

/// An input in the queue.
struct Active {
    /// Names the input in the results of model calls (positions in the queue shift).
    id: u64,
    job: Job,
    /// Index of the next window to hand to a model call.
    next: usize,
    /// Each window's logits, once its call has ended.
    logits: Vec<Option<WindowLogits>>,
    /// Windows whose logits have arrived.
    received: usize,
    first_call: Option<Instant>,
    failed: Option<BatchError>,
}

impl Active {
    fn windows(&self) -> usize {
        self.job.prepared.windows.len()
    }
}

pub(super) struct Scheduler {
    rx: mpsc::Receiver<Message>,
    /// Where workers report the end of their calls.
    done: mpsc::Sender<Message>,
    worker: Arc<Worker>,
    options: BatchOptions,
    /// One one-thread pool per worker for narrow calls (none with a single worker: its calls
    /// are all wide).
    narrow: Vec<Arc<rayon::ThreadPool>>,
    /// The narrow pools without a call.
    idle_narrow: Vec<usize>,
    /// The cost of the call running on each narrow pool (0 when idle).
    running_cost: Vec<usize>,
    /// Whether a wide call is running (it holds every worker).
    wide_running: bool,
    active: VecDeque<Active>,
    next_id: u64,
    closed: bool,
}

impl Scheduler {
    pub(super) fn new(
        rx: mpsc::Receiver<Message>,
        done: mpsc::Sender<Message>,
        worker: Worker,
        mut options: BatchOptions,
    ) -> std::io::Result<Self> {
        options.workers = options.workers.max(1);
        options.max_batch_tokens = options.max_batch_tokens.max(1);
        let narrow = if options.workers > 1 {
            (0..options.workers)
                .map(|i| {
                    crate::fpenv::pool_builder()
                        .num_threads(1)
                        .thread_name(move |_| format!("bertqa-model-{i}"))
                        .build()
                        .map(Arc::new)
                        .map_err(std::io::Error::other)
                })
                .collect::<std::io::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            rx,
            done,
            worker: Arc::new(worker),
            options,
            idle_narrow: (0..narrow.len()).rev().collect(),
            running_cost: vec![0; narrow.len()],
            narrow,
            wide_running: false,
            active: VecDeque::new(),
            next_id: 0,
            closed: false,
        })
    }

    /// Whether no model call is running.
    fn all_idle(&self) -> bool {
        !self.wide_running && self.idle_narrow.len() == self.narrow.len()
    }

    /// Whether a call may start now.
    fn can_start(&self) -> bool {
        !self.wide_running && (self.all_idle() || !self.idle_narrow.is_empty())
    }

    /// Runs until every handle is dropped and nothing is queued or running.
    pub(super) fn run(mut self) {
        while self.receive() {
            self.drop_departed();
            self.dispatch();
            // Failed inputs, inputs without windows and inputs whose last call ended.
            self.finish_done();
        }
    }

    /// Takes in every message there is, waiting for one when there is nothing to hand to an
    /// idle worker; false once the handles are gone and nothing is left.
    fn receive(&mut self) -> bool {
        let can_dispatch = self.can_start() && self.has_pending();
        if !can_dispatch {
            if self.closed && self.active.is_empty() && self.all_idle() {
                return false;
            }
            // `self.done` keeps the channel open, so this waits for a message.
            match self.rx.recv() {
                Ok(message) => self.handle(message),
                Err(_) => return false,
            }
        }
        while let Ok(message) = self.rx.try_recv() {
            self.handle(message);
        }
        true
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Job(job) => {
                let windows = job.prepared.windows.len();
                self.active.push_back(Active {
                    id: self.next_id,
                    job,
                    next: 0,
                    logits: (0..windows).map(|_| None).collect(),
                    received: 0,
                    first_call: None,
                    failed: None,
                });
                self.next_id += 1;
            }
            Message::Done { lane, results } => {
                match lane {
                    Lane::Wide => self.wide_running = false,
                    Lane::Narrow(pool) => {
                        self.running_cost[pool] = 0;
                        self.idle_narrow.push(pool);
                    }
                }
                self.store(results);
            }
            Message::Closed => self.closed = true,
        }
    }

    /// Files the results of a model call under their inputs (those still queued).
    fn store(&mut self, results: Vec<WindowResult>) {
        for result in results {
            let Some(a) = self.active.iter_mut().find(|a| a.id == result.id) else {
                continue;
            };
            match result.logits {
                Ok(logits) => {
                    if a.logits[result.window].replace(logits).is_none() {
                        a.received += 1;
                    }
                }
                Err(e) => {
                    a.failed.get_or_insert(e);
                }
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.active
            .iter()
            .any(|a| a.failed.is_none() && a.next < a.windows())
    }

    /// Drops the inputs of clients that went away, before more compute is spent on them.
    fn drop_departed(&mut self) {
        let metrics = &self.worker.metrics;
        self.active.retain(|a| {
            let gone = a.job.reply.is_closed();
            if gone {
                metrics.record_cancelled();
                metrics.queue_size.dec();
            }
            !gone
        });
    }

    /// Hands model calls to idle workers while windows wait: one wide call when nothing runs
    /// and one input is all that waits, else narrow calls, one per idle worker.
    fn dispatch(&mut self) {
        if !self.can_start() || !self.has_pending() {
            return;
        }
        if self.all_idle() && (self.narrow.is_empty() || self.pending_is_one_input()) {
            let items = self.next_batch(self.options.max_batch_tokens);
            self.wide_running = true;
            self.start_call(Lane::Wide, items);
            return;
        }
        // One share for the whole round, so that workers free at once get equal calls.
        let limit = self.share();
        while let Some(&pool) = self.idle_narrow.last() {
            let items = self.next_batch(limit);
            if items.is_empty() {
                break;
            }
            self.idle_narrow.pop();
            let lengths: Vec<usize> = items.iter().map(|i| i.window().len()).collect();
            self.running_cost[pool] = (self.worker.cost)(&lengths);
            self.start_call(Lane::Narrow(pool), items);
        }
    }

    /// Runs `items` as one model call in `lane`; its end comes back as [`Message::Done`].
    fn start_call(&self, lane: Lane, items: Vec<Item>) {
        tracing::trace!(
            ?lane,
            windows = items.len(),
            left = self.pending().count(),
            "model call"
        );
        let (worker, done) = (self.worker.clone(), self.done.clone());
        let call = move || {
            let results = worker.run(&items);
            // The scheduler outlives every call it started, so this only fails when the
            // process is going down anyway.
            let _ = done.send(Message::Done { lane, results });
        };
        match lane {
            Lane::Narrow(pool) => self.narrow[pool].spawn(call),
            Lane::Wide => match &self.options.pool {
                Some(pool) => pool.spawn(call),
                None => rayon::spawn(call),
            },
        }
    }

    /// Whether every window that waits belongs to one input.
    fn pending_is_one_input(&self) -> bool {
        let mut waiting = self
            .active
            .iter()
            .filter(|a| a.failed.is_none() && a.next < a.windows());
        waiting.next().is_some() && waiting.next().is_none()
    }

    /// The most one narrow call may cost now: `max_batch_tokens`, or less when an even share
    /// over all workers of the work there is (queued and running) is less. Workers free at once
    /// split the queue; one freed while another runs a small call takes more, and one freed
    /// beside a large call takes less, so that no call grows far beyond the others and keeps
    /// its inputs waiting (nor does a window wait for long behind a running call).
    fn share(&self) -> usize {
        let lengths: Vec<usize> = self.pending().map(|(_, len)| len).collect();
        let queued = (self.worker.cost)(&lengths);
        let running: usize = self.running_cost.iter().sum();
        (queued + running)
            .div_ceil(self.narrow.len().max(1))
            .clamp(1, self.options.max_batch_tokens)
    }

    /// The windows not yet handed to a call, in queue order: (position in the queue, length).
    fn pending(&self) -> impl Iterator<Item = ((usize, usize), usize)> + '_ {
        self.active
            .iter()
            .enumerate()
            .filter(|(_, a)| a.failed.is_none())
            .flat_map(|(i, a)| {
                let windows = &a.job.prepared.windows;
                (a.next..windows.len()).map(move |w| ((i, w), windows[w].len()))
            })
    }

    /// The windows not yet handed to a call, in turns: the next window of each waiting input
    /// in queue order, then the one after of each, and so on; an input of many windows shares
    /// each call with the inputs queued after it instead of making them wait for all of its
    /// windows. Of each input, the windows come in order, and at most a slice of
    /// `max_batch_tokens / SLICES` tokens of them (one window at least): a call is never all one
    /// long input, so that an input queued behind it waits for one short call at most.
    fn pending_in_turns(&self) -> impl Iterator<Item = ((usize, usize), usize)> + '_ {
        let slice = self.options.max_batch_tokens.div_ceil(SLICES);
        let waiting: Vec<(usize, usize)> = (0..self.active.len())
            .filter_map(|i| {
                let a = &self.active[i];
                if a.failed.is_some() || a.next >= a.windows() {
                    return None;
                }
                let mut tokens = 0;
                let take = a.job.prepared.windows[a.next..]
                    .iter()
                    .take_while(|w| {
                        tokens += w.len();
                        tokens <= slice
                    })
                    .count();
                Some((i, a.next + take.max(1)))
            })
            .collect();
        let (mut turn, mut k, mut taken_this_turn) = (0, 0, false);
        std::iter::from_fn(move || loop {
            if k == waiting.len() {
                if !taken_this_turn {
                    return None;
                }
                (turn, k, taken_this_turn) = (turn + 1, 0, false);
            }
            let (i, end) = waiting[k];
            k += 1;
            let a = &self.active[i];
            let w = a.next + turn;
            if w < end {
                taken_this_turn = true;
                return Some(((i, w), a.job.prepared.windows[w].len()));
            }
        })
    }

    /// Takes the next windows, in turns over the inputs (see
    /// [`Scheduler::pending_in_turns`]), for a call costing at most `limit`; the call holds
    /// them grouped by input.
    fn next_batch(&mut self, limit: usize) -> Vec<Item> {
        let count = windows_that_fit(
            self.pending_in_turns().map(|(_, len)| len),
            limit,
            self.worker.cost.as_ref(),
        );
        let mut picks: Vec<(usize, usize)> = self
            .pending_in_turns()
            .take(count)
            .map(|(p, _)| p)
            .collect();
        // An input's windows adjacent and in order (a failed call is retried input by input).
        picks.sort_unstable();
        let now = Instant::now();
        picks
            .into_iter()
            .map(|(i, w)| {
                let a = &mut self.active[i];
                a.first_call.get_or_insert(now);
                a.next = w + 1;
                Item {
                    id: a.id,
                    prepared: a.job.prepared.clone(),
                    window: w,
                }
            })
            .collect()
    }

    /// Answers the inputs that are complete or failed and removes them.
    fn finish_done(&mut self) {
        let now = Instant::now();
        let metrics = &self.worker.metrics;
        let mut i = 0;
        while i < self.active.len() {
            let a = &self.active[i];
            if a.failed.is_none() && a.received < a.windows() {
                i += 1;
                continue;
            }
            let Some(a) = self.active.remove(i) else {
                break;
            };
            metrics.queue_size.dec();
            let reply = match a.failed {
                Some(e) => Err(e),
                None => {
                    let first = a.first_call.unwrap_or(now);
                    let computed = Computed {
                        logits: a.logits.into_iter().flatten().collect(),
                        queue_time: first.saturating_duration_since(a.job.enqueued),
                        inference_time: now.saturating_duration_since(first),
                    };
                    metrics.record_input(computed.queue_time, computed.inference_time);
                    tracing::trace!(
                        windows = computed.logits.len(),
                        queue_ms = computed.queue_time.as_secs_f64() * 1e3,
                        inference_ms = computed.inference_time.as_secs_f64() * 1e3,
                        "input done"
                    );
                    Ok(computed)
                }
            };
            // The client may have gone in the meantime; nothing to do then.
            let _ = a.job.reply.send(reply);
        }
    }
}
