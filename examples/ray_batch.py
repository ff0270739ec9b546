"""Answer a JSONL file of questions with bertqa on a Ray cluster.

Reads the input format of ``bertqa ask --input`` — one ``{"id", "question", "context",
"params"?}`` object per line, ``params`` holding the pipeline's keyword arguments — with Ray Data,
answers it with ``map_batches`` on a pool of actors that each hold one bertqa pipeline, and
writes ``{"id", "answers": [{"score", "start", "end", "answer"}, ...]}`` lines (JSONL files in
the output directory), as ``bertqa ask --input`` prints them.

    pip install ./python "ray[data]"
    python examples/ray_batch.py questions.jsonl answers/ --model ../shared/models/minilm-xquad-qa

On a laptop this starts a local Ray; on a cluster, run it on the head node (or with
``ray job submit``) and pass ``--address auto``: the same code spreads the actors over every
node (``--actors`` of them, ``--threads`` CPUs each). Every node needs bertqa installed and the
model: a path on shared storage, or a Hub id, which each node fetches into its own HF cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

#: Columns of the answers written, as ``bertqa ask --input`` names them.
ANSWER_FIELDS = ("score", "start", "end", "answer")


class BertqaAnswerer:
    """A Ray Data actor: one bertqa pipeline, loaded once, answering batch after batch."""

    def __init__(self, model: str, threads: int, quantize: Optional[str] = None, offline: bool = False):
        import bertqa

        self.qa = bertqa.pipeline("question-answering", model=model, threads=threads,
                                  quantize=quantize, offline=offline)

    def __call__(self, batch: "pyarrow.Table") -> "pyarrow.Table":  # noqa: F821
        import pyarrow as pa

        ids = batch.column("id").to_pylist() if "id" in batch.column_names else [None] * batch.num_rows
        if any(i is None for i in ids):
            raise ValueError(
                "every line needs an \"id\": Ray reads the file in parallel, so answers are matched "
                "to questions by id, not by line number"
            )
        questions = batch.column("question").to_pylist()
        contexts = batch.column("context").to_pylist()
        params = (batch.column("params").to_pylist() if "params" in batch.column_names
                  else [None] * batch.num_rows)
        answers = answer_rows(self.qa, questions, contexts, params)
        answer_type = pa.list_(pa.struct([
            ("score", pa.float64()), ("start", pa.int64()), ("end", pa.int64()), ("answer", pa.string()),
        ]))
        return pa.table({"id": pa.array(ids), "answers": pa.array(answers, type=answer_type)})


def answer_rows(qa: Any, questions: List[str], contexts: List[str],
                params: List[Optional[Dict[str, Any]]]) -> List[List[Dict[str, Any]]]:
    """Answers rows that may carry different parameters: rows with the same parameters are
    answered in one call (their windows batched together), and answers come back in row order."""
    groups: Dict[str, List[int]] = {}
    for row, p in enumerate(params):
        # Arrow fills keys that other lines set with None: those are the defaults.
        given = {k: v for k, v in (p or {}).items() if v is not None}
        groups.setdefault(json.dumps(given, sort_keys=True), []).append(row)
    out: List[List[Dict[str, Any]]] = [[] for _ in questions]
    for key, rows in groups.items():
        answers = qa.answer_batch([questions[r] for r in rows], [contexts[r] for r in rows],
                                  **json.loads(key))
        for row, a in zip(rows, answers):
            out[row] = a
    return out


def run(input_path: str, output_dir: str, model: str, actors: int = 2, threads: int = 1,
        batch_size: int = 64, quantize: Optional[str] = None, offline: bool = False) -> None:
    """Answers every line of ``input_path`` into JSONL files in ``output_dir``, on the Ray
    cluster this process is connected to (``ray.init`` first)."""
    import ray

    # Reading and writing claim no CPU: the actors hold them all (--actors x --threads may equal
    # the cluster's CPUs), and a read task waiting for a free CPU would wait forever.
    ds = ray.data.read_json(input_path, num_cpus=0)
    answered = ds.map_batches(
        BertqaAnswerer,
        fn_constructor_kwargs={"model": model, "threads": threads, "quantize": quantize,
                               "offline": offline},
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads,
    )
    # pandas writes the JSON lines; 15 decimals keep the f32 scores.
    answered.write_json(output_dir, ray_remote_args={"num_cpus": 0}, double_precision=15, force_ascii=False)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="JSONL: one {\"id\", \"question\", \"context\", \"params\"?} per line")
    parser.add_argument("output", help="directory for the answer files (JSONL)")
    parser.add_argument("--model", required=True, help="checkpoint directory or Hub id")
    parser.add_argument("--actors", type=int, default=2, help="pipelines (Ray actors) in the pool")
    parser.add_argument("--threads", type=int, default=1, help="CPUs per actor")
    parser.add_argument("--batch-size", type=int, default=64, help="lines per actor call")
    parser.add_argument("--quantize", choices=["int8"], help="int8 linear layers")
    parser.add_argument("--offline", action="store_true", help="never touch the network")
    parser.add_argument("--address", help="Ray cluster to join (e.g. 'auto'); default: a local one")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    args = parser.parse_args(argv)
    for name in ("actors", "threads", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    import ray

    ray.init(address=args.address, num_cpus=args.num_cpus if args.address is None else None)
    try:
        run(args.input, args.output, args.model, actors=args.actors, threads=args.threads,
            batch_size=args.batch_size, quantize=args.quantize, offline=args.offline)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
