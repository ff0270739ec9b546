"""bertqa's Python pipeline vs transformers' pipeline, in one Python process, on the same questions.

Both pipelines load the same checkpoint and answer every question of a SQuAD file (default: the
894 questions of ../shared/data/xquad-en-train.json with the MiniLM QA model) with the pipeline's
defaults (top_k 1), on the same number of threads. Each is called as its users call it:
transformers with one list call per part (`question=[...], context=[...]`; its default
batch_size of 1 runs one question's windows per model call, as one call per question does),
bertqa with one list call per part (it batches the windows of many questions itself). The
engines take turns on `--parts` slices of the data, so that a drift in the machine's speed hits
both alike. Prints questions/s of each (wall time), the ratio, the same in questions per CPU
second of the process (less sensitive to other processes competing for the cores; it counts the
CPU the engine's threads spend waiting for work), and how many answers are identical (text and
character offsets; scores within 1e-4), as one JSON object on stdout.

    python bench/python_pipeline.py [--threads 2] [--parts 4] [--limit N]

On a machine that other processes keep busy, run it with OMP_WAIT_POLICY=PASSIVE: PyTorch's
OpenMP threads otherwise spin while they wait for each other, and with fewer free cores than
threads that makes transformers several times slower than its fair share (bertqa's threads
sleep when they wait). The policy in effect is printed with the results. On a virtual machine it
also prints, per engine, the share of the machine's CPU time the host took for other guests
while that engine ran (/proc/stat's steal): a ratio measured while one engine lost more time
than the other measures the host, so re-run it then.

Needs torch, transformers and bertqa (`pip install ./python`) in the same environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BERTQA_SHARED", REPO.parent / "shared"))


def cpu_times():
    """The machine's CPU time so far (clock ticks): (all of it, stolen by the host), or None
    where /proc/stat is not there."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(fields), fields[7]


def load_questions(path: Path, limit: int | None):
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        (qa["id"], qa["question"], paragraph["context"])
        for article in data["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    return rows[:limit] if limit else rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "minilm-xquad-qa"))
    parser.add_argument("--data", default=str(SHARED / "data" / "xquad-en-train.json"))
    parser.add_argument("--threads", type=int, default=2, help="threads of each engine")
    parser.add_argument("--parts", type=int, default=4, help="slices the engines take turns on")
    parser.add_argument("--limit", type=int, help="first N questions only")
    parser.add_argument("--quantize", choices=["int8"], help="bertqa with int8 linear layers")
    args = parser.parse_args()
    if args.threads < 1 or args.parts < 1:
        parser.error("--threads and --parts must be at least 1")

    import torch
    import transformers

    import bertqa

    torch.set_num_threads(args.threads)
    rows = load_questions(Path(args.data), args.limit)
    if not rows:
        parser.error(f"no questions in {args.data}")

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = transformers.pipeline("question-answering", model=args.model, device="cpu")
    load_transformers = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = bertqa.pipeline("question-answering", model=args.model, threads=args.threads, quantize=args.quantize)
    load_bertqa = time.perf_counter() - t0

    def transformers_answers(part):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = reference(question=[q for _, q, _ in part], context=[c for _, _, c in part])
        return [out] if len(part) == 1 else out

    def bertqa_answers(part):
        out = ours(question=[q for _, q, _ in part], context=[c for _, _, c in part])
        return [out] if len(part) == 1 else out

    engines = {"transformers": transformers_answers, "bertqa": bertqa_answers}
    # Warm-up: first calls pay for lazy initialisation (thread pools, allocator, caches).
    for answer in engines.values():
        answer(rows[:8])

    size = -(-len(rows) // args.parts)
    parts = [rows[i:i + size] for i in range(0, len(rows), size)]
    seconds = {name: 0.0 for name in engines}
    cpu_seconds = {name: 0.0 for name in engines}
    ticks = {name: [0, 0] for name in engines}  # (all, stolen) while each engine ran
    answers = {name: [] for name in engines}
    part_ratios = []
    for k, part in enumerate(parts):
        # Alternate which engine goes first, so that neither always follows the other.
        order = list(engines) if k % 2 == 0 else list(reversed(engines))
        took = {}
        for name in order:
            t0, c0, s0 = time.perf_counter(), time.process_time(), cpu_times()
            result = engines[name](part)
            took[name] = time.perf_counter() - t0
            s1 = cpu_times()
            if s0 and s1:
                ticks[name][0] += s1[0] - s0[0]
                ticks[name][1] += s1[1] - s0[1]
            seconds[name] += took[name]
            cpu_seconds[name] += time.process_time() - c0
            answers[name].append(result)
        part_ratios.append(took["transformers"] / took["bertqa"])
        print(f"part {k + 1}/{len(parts)}: {len(part)} questions, transformers {took['transformers']:.2f}s, "
              f"bertqa {took['bertqa']:.2f}s", file=sys.stderr)

    theirs = [a for part in answers["transformers"] for a in part]
    mine = [a for part in answers["bertqa"] for a in part]
    identical = sum(
        (m["answer"], m["start"], m["end"]) == (t["answer"], t["start"], t["end"])
        and abs(m["score"] - t["score"]) <= 1e-4
        for m, t in zip(mine, theirs)
    )
    differ = [
        {"id": qid, "bertqa": m, "transformers": t}
        for (qid, _, _), m, t in zip(rows, mine, theirs)
        if (m["answer"], m["start"], m["end"]) != (t["answer"], t["start"], t["end"])
    ]
    n = len(rows)
    result = {
        "questions": n,
        "model": args.model,
        "threads": args.threads,
        "quantize": args.quantize,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "bertqa": bertqa.__version__,
        "transformers_questions_per_second": n / seconds["transformers"],
        "bertqa_questions_per_second": n / seconds["bertqa"],
        "ratio": seconds["transformers"] / seconds["bertqa"],
        "part_ratios": part_ratios,
        "transformers_questions_per_cpu_second": n / cpu_seconds["transformers"],
        "bertqa_questions_per_cpu_second": n / cpu_seconds["bertqa"],
        "cpu_ratio": cpu_seconds["transformers"] / cpu_seconds["bertqa"],
        "host_steal": {name: stolen / total if total else None for name, (total, stolen) in ticks.items()},
        "load_average": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "identical_answers": identical,
        "first_differences": differ[:3],
        "load_seconds": {"transformers": load_transformers, "bertqa": load_bertqa},
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    steal = ", ".join(f"{name} {share:.0%}" for name, share in result["host_steal"].items()
                      if share is not None)
    print(
        f"bertqa {result['bertqa_questions_per_second']:.1f} q/s vs transformers "
        f"{result['transformers_questions_per_second']:.1f} q/s: {result['ratio']:.2f}x "
        f"(parts {min(part_ratios):.2f}-{max(part_ratios):.2f}x; per CPU second {result['cpu_ratio']:.2f}x); "
        f"{identical}/{n} answers identical; load average {os.getloadavg()[0]:.1f}"
        + (f"; host steal {steal}" if steal else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
