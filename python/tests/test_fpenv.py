"""bertqa flushes subnormal floats while its model runs, but gives the calling thread its
floating-point settings back: Python's own float math keeps subnormals after a call."""

from __future__ import annotations

import struct
import threading

from conftest import FIXTURES, SEED_CONTEXT, load_pipeline

# Runtime values: CPython folds constant expressions such as `5e-324 * 1.0` when compiling.
SMALLEST = float("5e-324")  # the smallest subnormal double
ONE = float("1")
TINY_NORMAL = float("2.2250738585072014e-308")  # the smallest normal double
HALF = float("0.5")


def subnormal_math() -> tuple:
    """A product with a subnormal operand and one with a subnormal result; both 0 when the
    thread flushes subnormals (DAZ and FTZ)."""
    return SMALLEST * ONE, TINY_NORMAL * HALF


def bits(x: float) -> int:
    """The double's bits: compared as floats, a flushing thread would read 5e-324 as 0 too."""
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def assert_subnormals_kept(where: str) -> None:
    operand, result = subnormal_math()
    assert bits(operand) == 1, f"{where}: 5e-324 * 1.0 gave {operand!r}"
    assert bits(result) == 1 << 51, f"{where}: 2.2e-308 * 0.5 gave {result!r}"


def ask(pipe) -> None:
    answer = pipe(question="What does Transformers provide?", context=SEED_CONTEXT)
    assert "answer" in answer


def test_the_calling_thread_keeps_subnormals_after_a_call():
    assert_subnormals_kept("before any call")
    # The global pool (threads not given) runs part of the call on this thread.
    ask(load_pipeline(str(FIXTURES / "bert-uncased")))
    assert_subnormals_kept("after a call on the global pool")
    # A pool of its own: this thread waits while the pool's threads run the model.
    ask(load_pipeline(str(FIXTURES / "bert-uncased"), threads=1))
    assert_subnormals_kept("after a call on the pipeline's own pool")


def test_other_python_threads_keep_subnormals_after_a_call():
    pipe = load_pipeline(str(FIXTURES / "bert-uncased"))
    failures = []

    def worker() -> None:
        try:
            assert_subnormals_kept("worker thread, before")
            ask(pipe)
            assert_subnormals_kept("worker thread, after")
        except AssertionError as e:  # reported from the main thread
            failures.append(str(e))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert_subnormals_kept("main thread, after the workers' calls")
