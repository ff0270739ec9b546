#!/usr/bin/env bash
# Open-domain QA side by side, in one run on one machine: every question of a SQuAD file asked
# over all of the file's paragraphs, without its own. Haystack 2.31 (InMemoryBM25Retriever ->
# ExtractiveReader, ../shared/reference/haystack_odqa.py) reading 1 and 3 paragraphs, and
# `bertqa eval --index` reading 1 passage, 3 ranked by the reader's logits alone, and 3 with the
# default ranking, taking turns on parts of the questions; one markdown table of EM / F1 (over
# all questions) / recall / questions/s and speed ratios at the end. Not part of CI; about 10
# minutes on 2 cores.
#
# Environment:
#   VENV=bench/.venv   a venv with torch and transformers 4.x; haystack-ai 2.31 is installed into
#                      it when missing
#   THREADS=2          threads of both (bertqa --threads, torch)
#   WORK=bench/out/odqa   the index, raw JSON and predictions (kept)
#   DATA=../shared/data/xquad-en-train.json
#   PARTS=4            parts of the questions (by article) on which the systems take turns
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
SHARED=${BERTQA_SHARED:-../shared}
MODEL=$SHARED/models/minilm-xquad-qa
DATA=${DATA:-$SHARED/data/xquad-en-train.json}
WORK=${WORK:-bench/out/odqa}
VENV=${VENV:-bench/.venv}
PARTS=${PARTS:-4}
PY=$VENV/bin/python

die() { echo "error: $*" >&2; exit 1; }
[ -x "$PY" ] || die "no venv at $VENV: create one with torch and 'transformers<5' (or set VENV=...)"
"$PY" -c "import haystack" 2>/dev/null || "$PY" -m pip install -q 'haystack-ai==2.31.0'
cargo build --release -q
BIN=target/release/bertqa
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS HAYSTACK_TELEMETRY_ENABLED=False

rm -rf "$WORK/index" "$WORK/parts"
mkdir -p "$WORK/parts"
"$BIN" index --index "$WORK/index" "$DATA" --json > "$WORK/index.json"
# The questions in PARTS parts (by article); every system answers over all paragraphs. The
# systems take turns on each part, so that a change in the machine's load hits them alike.
"$PY" - "$DATA" "$WORK/parts" "$PARTS" <<'PYEOF'
import json, sys
data, out, parts = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
arts = data["data"]
for p in range(parts):
    json.dump({"version": data.get("version", "1.1"), "data": arts[p::parts]}, open(f"{out}/part{p}.json", "w"))
PYEOF
bertqa_eval() { # NAME PASSAGES WEIGHT PART
  echo "part $4: bertqa eval --index, $2 passages, retrieval weight $3" >&2
  "$BIN" eval --model "$MODEL" --index "$WORK/index" --data "$WORK/parts/part$4.json" \
    --threads "$THREADS" --json --passages "$2" --retrieval-weight "$3" \
    --predictions "$WORK/parts/$1-$4-pred.json" > "$WORK/parts/$1-$4.json"
}
haystack() { # K PART
  echo "part $2: Haystack, top $1 paragraphs" >&2
  "$PY" "$SHARED/reference/haystack_odqa.py" "$MODEL" "$WORK/parts/part$2.json" "$DATA" \
    --top-k "$1" --pred "$WORK/parts/haystack-$1-$2-pred.json" > "$WORK/parts/haystack-$1-$2.json"
}
# The machine's 1-minute load average before each system's turn, reported with the table.
load() { cut -d' ' -f1 /proc/loadavg >> "$WORK/parts/load.txt"; }
for ((p = 0; p < PARTS; p++)); do
  load; haystack 1 "$p"
  load; bertqa_eval bertqa-1 1 20 "$p"
  load; haystack 3 "$p"
  load; bertqa_eval bertqa-3-reader 3 0 "$p"
  load; bertqa_eval bertqa-3 3 20 "$p"
done
load

"$PY" - "$WORK" "$DATA" "$PARTS" "$SHARED/reference" <<'PYEOF'
import json, sys
work, data, parts = sys.argv[1], json.load(open(sys.argv[2]))["data"], int(sys.argv[3])
sys.path.insert(0, sys.argv[4])
from squad_metric import score
def load(name, p):
    return json.load(open(f"{work}/parts/{name}-{p}.json"))
def row(label, name, haystack):
    preds, seconds, questions, found = {}, 0.0, 0, 0.0
    for p in range(parts):
        preds.update(json.load(open(f"{work}/parts/{name}-{p}-pred.json")))
        r = load(name, p)
        n = r["questions"] if haystack else r["total"]
        seconds += r["seconds"]
        questions += n
        found += n * (100 * r["recall_at_k"] if haystack else r["recall_at_k"])
    em, f1, total = score(data, preds)
    assert total == questions, (total, questions)
    return label, em, f1, found / questions, questions / seconds
rows = [row("Haystack 2.31, top 1 paragraph", "haystack-1", True),
        row("Haystack 2.31, top 3 paragraphs", "haystack-3", True),
        row("bertqa, 1 passage", "bertqa-1", False),
        row("bertqa, 3 passages, reader logits alone (weight 0)", "bertqa-3-reader", False),
        row("bertqa, 3 passages, default ranking (weight 20)", "bertqa-3", False)]
h3 = rows[1][4]
loads = [float(x) for x in open(f"{work}/parts/load.txt").read().split()]
print(f"\nall questions over all paragraphs, in {parts} parts taken in turns; load average "
      f"{min(loads):.2f} to {max(loads):.2f} (mean {sum(loads) / len(loads):.2f})\n")
print("| system | EM | F1 | recall@K | questions/s | vs Haystack top 3 |")
print("|---|---|---|---|---|---|")
for label, em, f1, rec, qps in rows:
    print(f"| {label} | {em:.2f} | {f1:.2f} | {rec:.2f} | {qps:.2f} | {qps / h3:.2f}x |")
PYEOF
