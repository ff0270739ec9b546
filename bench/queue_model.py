"""How long the latency tail of an ideal server would be on bench/load.sh's questions.

bench/load.sh holds the server to p99 / p50 at concurrency 8. Part of that tail is not the
server's: the questions' contexts differ in length (43 to 303 tokens for the first 200 of
golden-train.json), so an answer's compute time differs too, and a request that queues behind
long ones waits longer. This script simulates a server with no overhead at all — `clients`
clients each sending their next request the moment the previous answer arrives (as wrk does),
`workers` model workers taking calls of `batch` requests first come first served, each
request's compute time proportional to its window's cost (tokens, plus attention's tokens²
term at MiniLM's shape) — and prints the p50, p99 and their ratio it gives. Only the shape of
the compute times matters for the ratio, not the machine's speed.

The clients are grouped as wrk groups its connections: `threads` threads (load.sh: up to 4),
each walking the question list with a counter of its own, its connections taking turns. With
`--start same` every thread starts at the top of the list (the threads then ask the same
questions at about the same time, and consecutive questions share a context); with the default
`--start spread`, as load.sh does, thread k starts k/threads of the way down.

    python bench/queue_model.py [--clients 8] [--threads 4] [--start spread|same] [--workers 2]
                                [--batch 1] [--questions 200]
"""

import argparse
import heapq
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BERTQA_SHARED", REPO.parent / "shared"))
MODEL = SHARED / "models" / "minilm-xquad-qa"


def window_costs(questions):
    """Each question's token count and attention term, as the pipeline tokenizes it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    cases = json.loads((MODEL / "golden-train.json").read_text())["cases"][:questions]
    costs = []
    for case in cases:
        windows = tokenizer(case["question"], case["context"], truncation="only_second",
                            max_length=384, stride=128, return_overflowing_tokens=True)["input_ids"]
        # Per token: the linear layers' 12·h² multiply-adds; per token pair: attention's 2·h.
        hidden = 384
        costs.append(sum(12 * hidden * hidden * len(w) + 2 * hidden * len(w) ** 2 for w in windows))
    return costs


def simulate(costs, clients, threads, start, workers, batch, answers=20000):
    """Latencies (in units of the mean compute time) of a closed loop of `clients`."""
    mean = sum(costs) / len(costs)
    service = [c / mean for c in costs]
    threads = min(threads, clients)
    # Thread t's counter, and the thread each client's connection belongs to (wrk deals the
    # connections out evenly).
    counters = [t * len(service) // threads if start == "spread" else 0 for t in range(threads)]
    thread_of = [client * threads // clients for client in range(clients)]

    def next_question(client):
        t = thread_of[client]
        question = counters[t]
        counters[t] = (question + 1) % len(service)
        return question

    queue = [(0.0, client, next_question(client)) for client in range(clients)]  # (sent at, ...)
    running, idle, latencies, calls = [], workers, [], 0

    def dispatch(now):
        nonlocal idle, calls
        while idle and queue:
            call = queue[:batch]
            del queue[:batch]
            idle -= 1
            calls += 1
            heapq.heappush(running, (now + sum(service[q] for _, _, q in call), calls, call))

    dispatch(0.0)
    now = 0.0
    while len(latencies) < answers:
        now, _, call = heapq.heappop(running)
        idle += 1
        for at, client, _ in call:
            latencies.append(now - at)
            queue.append((now, client, next_question(client)))
        dispatch(now)
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4, help="wrk threads (load.sh: up to 4)")
    parser.add_argument("--start", choices=("spread", "same"), default="spread",
                        help="where each wrk thread starts in the question list")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="requests per model call")
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args()
    for name in ("clients", "threads", "workers", "batch", "questions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    costs = window_costs(args.questions)
    if not costs:
        parser.error("no questions to simulate")
    p50, p99 = simulate(costs, args.clients, args.threads, args.start, args.workers, args.batch)
    print(json.dumps({"clients": args.clients, "threads": min(args.threads, args.clients),
                      "start": args.start, "workers": args.workers, "batch": args.batch,
                      "questions": len(costs), "p50": round(p50, 3), "p99": round(p99, 3),
                      "p99_over_p50": round(p99 / p50, 3)}))


if __name__ == "__main__":
    main()
