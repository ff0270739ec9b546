#!/usr/bin/env bash
# Open-domain QA side by side, in one run on one machine: every question of a SQuAD file asked
# over all of the file's paragraphs, without its own. Haystack 2.31 (InMemoryBM25Retriever ->
# ExtractiveReader, ../shared/reference/haystack_odqa.py) reading 1 and 3 paragraphs, and
# `bertqa eval --index` reading 1 passage, 3 ranked by the reader's logits alone, and 3 with the
# default ranking; one markdown table of EM / F1 / recall / questions/s and speed ratios at the
# end. Not part of CI; about 10 minutes on 2 cores.
#
# Environment:
#   VENV=bench/.venv   a venv with torch and transformers 4.x; haystack-ai 2.31 is installed into
#                      it when missing
#   THREADS=2          threads of both (bertqa --threads, torch)
#   WORK=bench/out/odqa   the index, raw JSON and predictions (kept)
#   DATA=../shared/data/xquad-en-train.json
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
SHARED=${BERTQA_SHARED:-../shared}
MODEL=$SHARED/models/minilm-xquad-qa
DATA=${DATA:-$SHARED/data/xquad-en-train.json}
WORK=${WORK:-bench/out/odqa}
VENV=${VENV:-bench/.venv}
PY=$VENV/bin/python

die() { echo "error: $*" >&2; exit 1; }
[ -x "$PY" ] || die "no venv at $VENV: create one with torch and 'transformers<5' (or set VENV=...)"
"$PY" -c "import haystack" 2>/dev/null || "$PY" -m pip install -q 'haystack-ai==2.31.0'
cargo build --release -q
BIN=target/release/bertqa
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS HAYSTACK_TELEMETRY_ENABLED=False

rm -rf "$WORK/index"
mkdir -p "$WORK"
"$BIN" index --index "$WORK/index" "$DATA" --json > "$WORK/index.json"
bertqa_eval() { # NAME PASSAGES WEIGHT
  echo "bertqa eval --index, $2 passages, retrieval weight $3" >&2
  "$BIN" eval --model "$MODEL" --index "$WORK/index" --data "$DATA" --threads "$THREADS" --json \
    --passages "$2" --retrieval-weight "$3" --predictions "$WORK/$1-pred.json" > "$WORK/$1.json"
}
haystack() { # K
  echo "Haystack, top $1 paragraphs" >&2
  "$PY" "$SHARED/reference/haystack_odqa.py" "$MODEL" "$DATA" "$DATA" --top-k "$1" \
    --pred "$WORK/haystack-$1-pred.json" > "$WORK/haystack-$1.json"
}
haystack 1
bertqa_eval bertqa-1 1 20
haystack 3
bertqa_eval bertqa-3-reader 3 0
bertqa_eval bertqa-3 3 20

"$PY" - "$WORK" <<'PYEOF'
import json, sys
work = sys.argv[1]
load = lambda name: json.load(open(f"{work}/{name}.json"))
h1, h3 = load("haystack-1"), load("haystack-3")
rows = [
    ("Haystack 2.31, top 1 paragraph", h1["exact_match"], h1["f1"], 100 * h1["recall_at_k"], h1["questions_per_s"]),
    ("Haystack 2.31, top 3 paragraphs", h3["exact_match"], h3["f1"], 100 * h3["recall_at_k"], h3["questions_per_s"]),
]
for name, label in [("bertqa-1", "bertqa, 1 passage"),
                    ("bertqa-3-reader", "bertqa, 3 passages, reader logits alone (weight 0)"),
                    ("bertqa-3", "bertqa, 3 passages, default ranking (weight 20)")]:
    b = load(name)
    rows.append((label, b["exact_match"], b["f1"], b["recall_at_k"], b["questions_per_second"]))
print(f"\n{h1['questions']} questions over {h1['corpus_paragraphs']} paragraphs, torch threads {h1['torch_threads']}\n")
print("| system | EM | F1 | recall@K | questions/s | vs Haystack top 3 |")
print("|---|---|---|---|---|---|")
for label, em, f1, rec, qps in rows:
    print(f"| {label} | {em:.2f} | {f1:.2f} | {rec:.2f} | {qps:.2f} | {qps / h3['questions_per_s']:.2f}x |")
PYEOF
