"""The arithmetic behind bench/archs.sh's table: how many floating-point operations the encoder
of each architecture does on the benchmark's questions, and at what rate each engine did them.

    python bench/flops.py WORK PARTS ARCH...     (run by bench/archs.sh after its runs)

For each architecture it tokenizes the questions as the pipeline does (max_seq_len 384,
doc_stride 128, the checkpoint's tokenizer), counts the multiply-adds of the encoder's linear
layers (Q, K, V, attention output, FFN in and out) and of attention (scores and weighted values)
over every window, and divides by the seconds of each run. Embeddings, normalisations and the
QA head are left out (under 1% at base size). DeBERTa's relative-position terms and MobileBERT's
bottlenecks are not modelled; those rows are skipped.

The pipeline's rate is the floor a 2x speed-up has to double: an engine that does the same
operations needs twice the pipeline's GFLOP/s, which the last column compares with the f32 rate
bertqa reached.
"""

import json
import os
import sys

from transformers import AutoTokenizer

STANDARD = {"bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert"}


def shape(config):
    """(layers, hidden, intermediate) of a standard encoder config."""
    if config["model_type"] == "distilbert":
        return config["n_layers"], config["dim"], config["hidden_dim"]
    return config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]


def gflop(model, data):
    config = json.load(open(os.path.join(model, "config.json")))
    if config["model_type"] not in STANDARD:
        return None
    layers, h, f = shape(config)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = squares = 0
    for article in json.load(open(data))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                windows = tokenizer(qa["question"], paragraph["context"], truncation="only_second",
                                    max_length=384, stride=128, return_overflowing_tokens=True)
                for ids in windows["input_ids"]:
                    tokens += len(ids)
                    squares += len(ids) ** 2
    linear = 2 * tokens * (4 * h * h + 2 * h * f)
    attention = 2 * 2 * squares * h
    return layers * (linear + attention) / 1e9


def main():
    work, parts, archs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    runs = os.path.join(work, "runs")
    print("| architecture | GFLOP (encoder) | pipeline GFLOP/s | bertqa f32 GFLOP/s | 2× pipeline needs |")
    print("|---|---|---|---|---|")
    for arch in archs:
        total = gflop(os.path.join(work, "models", arch), os.path.join(work, f"q{os.environ.get('QUESTIONS', 40)}.json"))
        if total is None:
            continue
        seconds = {}
        for kind in ("pipeline", "f32"):
            seconds[kind] = 0.0
            for i in range(parts):
                report = json.load(open(os.path.join(runs, f"{arch}-{kind}-{i}.json")))
                seconds[kind] += report["pipeline"]["seconds"] if kind == "pipeline" else report["seconds"]
        p, f = total / seconds["pipeline"], total / seconds["f32"]
        print(f"| {arch} | {total:.0f} | {p:.0f} | {f:.0f} | {2 * p:.0f} |")


if __name__ == "__main__":
    main()
