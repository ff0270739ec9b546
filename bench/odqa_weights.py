"""Scores ways of ranking answers across retrieved passages, on a dump written by
`cargo run --release --example odqa_candidates -- MODEL SQUAD.json DUMP.jsonl 10`.

Prints BM25 recall@K, then EM/F1 of each ranking for several K (passages read), and chooses the
BM25 weight on half of the articles (even positions in the file), reporting it on the other half
and on all, so that the weight is not fitted to the figures it is judged by.

Usage: python odqa_weights.py SQUAD.json DUMP.jsonl"""
import json, math, os, sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference"))
from squad_metric import f1, normalize  # noqa: E402

squad_path, dump_path = sys.argv[1], sys.argv[2]
squad = json.load(open(squad_path))["data"]
golds, article_of = {}, {}
for a, art in enumerate(squad):
    for par in art["paragraphs"]:
        for qa in par["qas"]:
            golds[qa["id"]] = [g["text"] for g in qa["answers"]]
            article_of[qa["id"]] = a
rows = [json.loads(line) for line in open(dump_path)]


def metrics(preds, ids):
    em = sum(max(float(normalize(preds[i]) == normalize(g)) for g in golds[i]) for i in ids)
    f = sum(max(f1(preds[i], g) for g in golds[i]) for i in ids)
    return 100 * em / len(ids), 100 * f / len(ids)


def predict(row, k, key):
    """The best span over the first k passages by key(passage, span, best_bm25)."""
    ps = row["passages"][:k]
    if not ps:
        return ""
    best_bm25 = max(p["bm25"] for p in ps)
    cands = [(key(p, s, best_bm25), s["text"]) for p in ps for s in p["spans"]]
    return max(cands, key=lambda c: c[0])[1] if cands else ""


def logit_plus_bm25(w):
    return lambda p, s, b: s["logit"] + w * math.log(p["bm25"] / b)


rankings = {
    "window probability (pipeline score)": lambda p, s, b: s["prob"],
    "raw logit": lambda p, s, b: s["logit"],
    "probability x bm25/best": lambda p, s, b: math.log(s["prob"]) + math.log(p["bm25"] / b),
}
all_ids = [r["id"] for r in rows]
print("recall@K:", {k: round(100 * sum(any(p["gold"] for p in r["passages"][:k]) for r in rows) / len(rows), 2)
                    for k in (1, 2, 3, 5, 10)})
ks = (1, 2, 3, 5, 7, 10)
print("\n| ranking | " + " | ".join(f"K={k} EM / F1" for k in ks) + " |")
print("|---|" + "---|" * len(ks))
for name, key in rankings.items():
    cells = [metrics({r["id"]: predict(r, k, key) for r in rows}, all_ids) for k in ks]
    print(f"| {name} | " + " | ".join(f"{e:.2f} / {f:.2f}" for e, f in cells) + " |")
weights = (0, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20)
for w in weights:
    cells = [metrics({r["id"]: predict(r, k, logit_plus_bm25(w)) for r in rows}, all_ids) for k in ks]
    print(f"| logit + {w} ln(bm25/best) | " + " | ".join(f"{e:.2f} / {f:.2f}" for e, f in cells) + " |")

# The weight chosen on half of the articles, judged on the other half.
half_a = [i for i in all_ids if article_of[i] % 2 == 0]
half_b = [i for i in all_ids if article_of[i] % 2 == 1]
for k in (3, 5, 10):
    by_w = {w: metrics({r["id"]: predict(r, k, logit_plus_bm25(w)) for r in rows}, half_a)[1] for w in weights}
    w = max(by_w, key=by_w.get)
    preds = {r["id"]: predict(r, k, logit_plus_bm25(w)) for r in rows}
    (ea, fa), (eb, fb), (e, f) = metrics(preds, half_a), metrics(preds, half_b), metrics(preds, all_ids)
    print(f"K={k}: weight chosen on even articles ({len(half_a)} q): {w}; "
          f"even {ea:.2f}/{fa:.2f}, odd (held out, {len(half_b)} q) {eb:.2f}/{fb:.2f}, all {e:.2f}/{f:.2f}")
