"""Base-sized QA checkpoints with random weights for every architecture bertqa runs, made with
transformers from the shared fixtures' configs (so tokenizers and architecture options are the
fixtures'), for bench/archs.sh. Run inside bench/.venv.

  make FIXTURES OUT      one OUT/<arch>/ checkpoint per fixture (kept when already there)
  subset DATA N OUT      the first N questions of a SQuAD file, as a SQuAD file
  split DATA PARTS OUT   its paragraphs dealt round-robin into OUT/part-I.json (a few questions
                         may come from one article, so articles are too coarse to deal)
  table RUNS PARTS OPENVINO ARCH...
                         the markdown table of archs.sh from RUNS/<arch>-<kind>-<i>.json and .mem
                         (kinds pipeline, f32, int8, and openvino unless OPENVINO is 0); an
                         OpenVINO run that failed is reported in its row ("export failed: ..."
                         where optimum-intel could not export the architecture)
"""
import json
import os
import shutil
import sys

import torch

# BERT-base dimensions; MobileBERT keeps its published (google/mobilebert-uncased) shape.
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
MOBILEBERT = dict(
    hidden_size=512, embedding_size=128, intra_bottleneck_size=128, true_hidden_size=128,
    num_hidden_layers=24, num_attention_heads=4, intermediate_size=512, num_feedforward_networks=4,
    hidden_act="relu", normalization_type="no_norm", trigram_input=True, use_bottleneck=True,
    key_query_shared_bottleneck=True, use_bottleneck_attention=False,
)
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "spm.model",
                   "sentencepiece.bpe.model", "added_tokens.json"]


def base_config(fixture_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(fixture_dir)
    if config.model_type == "mobilebert":
        shape = MOBILEBERT
    elif config.model_type == "distilbert":
        shape = dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072)
    else:
        shape = dict(BASE)
        if config.model_type in ("albert", "electra"):
            shape["embedding_size"] = 128
    for key, value in shape.items():
        setattr(config, key, value)
    return config


def make(fixtures, out):
    from transformers import AutoModelForQuestionAnswering

    # One fixture per architecture: every fixture folder with a golden.json but the .bin copy
    # of BERT.
    names = sorted(name for name in os.listdir(fixtures)
                   if os.path.exists(os.path.join(fixtures, name, "golden.json"))
                   and not name.endswith("-pytorch-bin"))
    for name in names:
        target = os.path.join(out, name)
        if os.path.exists(os.path.join(target, "model.safetensors")):
            continue
        src = os.path.join(fixtures, name)
        torch.manual_seed(0)
        model = AutoModelForQuestionAnswering.from_config(base_config(src)).eval()
        model.save_pretrained(target, safe_serialization=True)
        for f in TOKENIZER_FILES:
            if os.path.exists(os.path.join(src, f)):
                shutil.copy(os.path.join(src, f), target)
        print(f"made {target}", file=sys.stderr)


def subset(data, n, out):
    squad = json.load(open(data))
    left, articles = n, []
    for article in squad["data"]:
        paragraphs = []
        for p in article["paragraphs"]:
            qas = p["qas"][:left]
            left -= len(qas)
            if qas:
                paragraphs.append({"context": p["context"], "qas": qas})
            if left == 0:
                break
        if paragraphs:
            articles.append({"title": article["title"], "paragraphs": paragraphs})
        if left == 0:
            break
    json.dump({"version": squad.get("version", "1.1"), "data": articles}, open(out, "w"))


def split(data, parts, out):
    squad = json.load(open(data))
    os.makedirs(out, exist_ok=True)
    dealt = [[] for _ in range(parts)]
    paragraphs = [(a["title"], p) for a in squad["data"] for p in a["paragraphs"]]
    for i, (title, paragraph) in enumerate(paragraphs):
        dealt[i % parts].append({"title": title, "paragraphs": [paragraph]})
    for i, articles in enumerate(dealt):
        if not articles:
            sys.exit(f"{data} has fewer paragraphs than {parts} parts")
        path = os.path.join(out, f"part-{i}.json")
        json.dump({"version": squad.get("version", "1.1"), "data": articles}, open(path, "w"))


def run_figures(runs, parts, arch, kind):
    """(questions/s, peak MiB) of one engine over all parts."""
    seconds = questions = 0.0
    peak = 0
    for i in range(parts):
        report = json.load(open(os.path.join(runs, f"{arch}-{kind}-{i}.json")))
        if kind in ("pipeline", "openvino"):
            seconds += report["pipeline"]["seconds"]
            questions += report["pipeline"]["questions"]
        else:
            seconds += report["seconds"]
            questions += report["total"]
        peak = max(peak, int(open(os.path.join(runs, f"{arch}-{kind}-{i}.mem")).read().split()[-1]))
    return questions / seconds, peak / 1024


def table(runs, parts, openvino, archs):
    from openvino_engines import run_failure

    openvino = openvino != "0"
    ov_head, ov_rule, ov_peak = (
        (" OpenVINO q/s | × pipeline | bertqa f32 / OpenVINO |", "---|---|---|", " / OpenVINO") if openvino else ("", "", "")
    )
    print(f"| architecture | pipeline q/s | bertqa f32 q/s | × pipeline | bertqa int8 q/s | × pipeline | int8 / f32 |"
          f"{ov_head} peak MiB pipeline / f32 / int8{ov_peak} |")
    print(f"|---|---|---|---|---|---|---|{ov_rule}---|")
    versions, chosen = {}, {}
    for arch in archs:
        (p, pm), (f, fm), (q, qm) = (run_figures(runs, parts, arch, k) for k in ("pipeline", "f32", "int8"))
        ov_cells, ov_mem = "", ""
        if openvino:
            failure = None
            for i in range(parts):
                path = os.path.join(runs, f"{arch}-openvino-{i}")
                failure = run_failure(path + ".json", path + ".log") if os.path.exists(path + ".json") else \
                    "failed: no report"
                if failure:
                    break
            if failure:
                ov_cells, ov_mem = f" {failure} | – | – |", " / –"
            else:
                o, om = run_figures(runs, parts, arch, "openvino")
                ov_cells, ov_mem = f" {o:.2f} | {o / p:.2f}× | {f / o:.2f}× |", f" / {om:.0f}"
                info = json.load(open(os.path.join(runs, f"{arch}-openvino-0.json"))).get("openvino", {})
                versions.update({k: info.get(k) for k in ("openvino", "optimum-intel") if info.get(k)})
                chosen.setdefault(info.get("precision", "?"), []).append(arch)
        print(f"| {arch} | {p:.2f} | {f:.2f} | {f / p:.2f}× | {q:.2f} | {q / p:.2f}× | {q / f:.2f}× |{ov_cells} "
              f"{pm:.0f} / {fm:.0f} / {qm:.0f}{ov_mem} |")
    if openvino and versions:
        picks = "; ".join(f"{precision} ({', '.join(names)})" for precision, names in chosen.items())
        print()
        print(f"OpenVINO {versions.get('openvino', '?')} (optimum-intel {versions.get('optimum-intel', '?')}) in "
              f"transformers' pipeline, default precision; its CPU plugin chose {picks}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "make":
        make(*args)
    elif command == "subset":
        subset(args[0], int(args[1]), args[2])
    elif command == "split":
        split(args[0], int(args[1]), args[2])
    elif command == "table":
        table(args[0], int(args[1]), args[2], args[3:])
    else:
        sys.exit(__doc__)
