#!/usr/bin/env bash
# bertqa vs PyTorch (transformers pipeline) on this machine, measured in one run.
# Installs the reference in a throw-away venv (bench/.venv). Not part of CI.
#   bench/compare.sh            # all cases
#   SKIP_LARGE=1 bench/compare.sh   # skip BERT-large
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
SHARED=${BERTQA_SHARED:-../shared}
MODEL=$SHARED/models/minilm-xquad-qa
DATA=$SHARED/data/xquad-en-train.json
# Results (and the random-weight models) stay in bench/out/compare for inspection.
WORK=${WORK:-bench/out/compare}
mkdir -p "$WORK"

if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q torch 'transformers<5' safetensors
fi
cargo build --release -q
cargo build --release -q --example forward_timing
BERTQA=target/release/bertqa

echo "== PyTorch reference" >&2
THREADS=$THREADS SKIP_LARGE=${SKIP_LARGE:-0} bench/.venv/bin/python bench/reference.py "$MODEL" "$DATA" "$WORK" > "$WORK/torch.json"

echo "== bertqa eval" >&2
$BERTQA eval --threads "$THREADS" --model "$MODEL" --data "$DATA" --json --predictions "$WORK/bertqa_predictions.json" > "$WORK/bertqa.json"

echo "== cold start" >&2
t0=$(date +%s%N); bench/.venv/bin/python bench/cold_start.py "$MODEL" >/dev/null 2>&1; t1=$(date +%s%N)
$BERTQA ask --threads "$THREADS" --model "$MODEL" -q "Who won?" -c "Marie Curie won the Nobel Prize in 1903." >/dev/null; t2=$(date +%s%N)
echo "{\"torch_cold_s\": $(( (t1 - t0) / 1000000 ))e-3, \"bertqa_cold_s\": $(( (t2 - t1) / 1000000 ))e-3}" > "$WORK/cold.json"

for size in base large; do
  dir=$WORK/bert-$size-random
  [ -d "$dir" ] || continue
  RAYON_NUM_THREADS=$THREADS target/release/examples/forward_timing "$dir" 384 1 5 > "$WORK/$size-b1.txt"
  RAYON_NUM_THREADS=$THREADS target/release/examples/forward_timing "$dir" 384 8 2 > "$WORK/$size-b8.txt"
done

python3 - "$WORK" <<'PY'
import json, re, sys, os
w = sys.argv[1]
t = json.load(open(f"{w}/torch.json")); b = json.load(open(f"{w}/bertqa.json")); c = json.load(open(f"{w}/cold.json"))
tp = json.load(open(f"{w}/torch_predictions.json")); bp = json.load(open(f"{w}/bertqa_predictions.json"))
same = sum(tp[k] == bp.get(k) for k in tp)
print(f"eval minilm-xquad-qa: bertqa {b['questions_per_second']:.2f} q/s vs pipeline {t['pipeline']['questions_per_s']:.2f} q/s "
      f"-> {b['questions_per_second'] / t['pipeline']['questions_per_s']:.2f}x; identical answers {same}/{len(tp)}")
print(f"cold start: bertqa {c['bertqa_cold_s']:.2f}s vs torch {c['torch_cold_s']:.2f}s -> {c['bertqa_cold_s'] / c['torch_cold_s']:.2f}x")
for size in ["base", "large"]:
    if f"bert_{size}" not in t: continue
    r = t[f"bert_{size}"]
    b1 = float(re.search(r"\(([\d.]+) ms per sequence", open(f"{w}/{size}-b1.txt").read()).group(1))
    b8 = float(re.search(r"\(([\d.]+) ms per sequence", open(f"{w}/{size}-b8.txt").read()).group(1))
    print(f"bert-{size} seq 384 b1: bertqa {b1:.0f} ms vs torch fp32 {r['fp32_b1_ms']:.0f} ms -> {b1 / r['fp32_b1_ms']:.2f}x (torch bf16 {r['bf16_b1_ms']:.0f} ms)")
    print(f"bert-{size} seq 384 b8: bertqa {b8:.0f} ms/seq vs torch fp32 {r['fp32_b8_ms_per_seq']:.0f} ms/seq -> {b8 / r['fp32_b8_ms_per_seq']:.2f}x")
PY
