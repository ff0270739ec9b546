"""The GIL is released while the model runs: other Python threads keep running during a call,
several threads can share one pipeline, and Ctrl-C stops a long call."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import SEED_CONTEXT

QUESTIONS = [
    "What does Transformers provide?",
    "How many pretrained models are there?",
    "Which frameworks are supported?",
    "What was Transformers called before?",
]


def test_python_threads_run_while_the_model_runs(minilm):
    # A long context (many windows) and enough questions for one call to last a while.
    context = " ".join([SEED_CONTEXT] * 12)
    questions = QUESTIONS * 2
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        time.sleep(0.05)
        start = time.perf_counter()
        answers = minilm(question=questions, context=context)
        end = time.perf_counter()
    finally:
        stop.set()
        ticker.join()
    assert len(answers) == len(questions)
    duration = end - start
    assert duration > 0.3, f"the call took {duration:.3f}s, too short to show anything"
    # Ticks well inside the call: had the call held the GIL, the ticker could not have run.
    inside = [t for t in ticks if start + 0.05 < t < end - 0.05]
    assert len(inside) >= 10, f"{len(inside)} ticks during a {duration:.2f}s call"
    # And they are spread over the call, not bunched at one gap.
    first_half = [t for t in inside if t < start + duration / 2]
    assert first_half and len(first_half) < len(inside), "ticks in both halves of the call"


def test_threads_share_one_pipeline(minilm):
    expected = [minilm(question=q, context=SEED_CONTEXT, top_k=3) for q in QUESTIONS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(minilm, question=q, context=SEED_CONTEXT, top_k=3) for q in QUESTIONS * 4]
        results = [f.result() for f in futures]
    assert results == expected * 4


def test_ctrl_c_stops_a_long_call(minilm):
    # One round (64 questions) takes `round_seconds`; the call below has 60 of them, and
    # Ctrl-C comes during the first: it must stop within a few rounds, not run to its end.
    questions = QUESTIONS * 16 * 60
    t0 = time.perf_counter()
    minilm(question=questions[:64], context=SEED_CONTEXT)
    round_seconds = time.perf_counter() - t0
    timer = threading.Timer(round_seconds / 2, os.kill, args=(os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            minilm(question=questions, context=SEED_CONTEXT)
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - start
    assert elapsed < 10 * round_seconds, f"stopped after {elapsed:.1f}s; one round takes {round_seconds:.2f}s"
    assert minilm(question=QUESTIONS[0], context=SEED_CONTEXT)["answer"]
