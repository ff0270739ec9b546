#!/usr/bin/env bash
# bertqa vs PyTorch / transformers / ONNX Runtime / OpenVINO on this machine, measured in one run:
# every ratio the speed work is judged by, printed as one markdown table at the end, headed by the
# CPU (lscpu) and OpenVINO's version and the precision its CPU plugin chose. Not part of CI.
#
#   bench/compare.sh                  # all cases (about 35 minutes on 2 cores with OPENVINO=0;
#                                     # the OpenVINO cases add to that)
#   SKIP_LARGE=1 bench/compare.sh     # without BERT-large (about 15 minutes with OPENVINO=0)
#
# Environment:
#   THREADS=2          threads of every engine (bertqa --threads, torch, ORT intra-op, OpenVINO
#                      INFERENCE_NUM_THREADS)
#   SKIP_LARGE=1       skip BERT-large
#   OPENVINO=0         skip every OpenVINO case (and its install). Otherwise OpenVINO runs at its
#                      CPU plugin's default precision (bf16 on CPUs with AMX or AVX512-BF16, f32
#                      elsewhere), forced f32, and NNCF int8 (forward cases only), with
#                      PERFORMANCE_HINT LATENCY; in the eval case through optimum-intel's
#                      OVModelForQuestionAnswering in transformers' pipeline. A failing OpenVINO
#                      case keeps its row in the table, with its error, and the run goes on.
#   WORK=bench/out/compare   raw JSON, logs, random-weight models, ONNX and OpenVINO IR files (kept)
#   BIN_DIR=DIR        take bertqa and forward_timing from DIR instead of building them
#   EVAL_PARTS=4       parts of DATA on which the eval engines take turns
#   ROUNDS=3           turns of the engines in the forward-latency cases
#   TRAIN_WARMUP=2 TRAIN_STEPS=4   training steps left out / timed
# Quick check of the script itself (figures meaningless): DATA=small-squad.json LAYERS=2 ITERS_B1=1
#   ITERS_B8=1 ROUNDS=1 EVAL_PARTS=2 TRAIN_BATCH=2 TRAIN_SEQ=128 TRAIN_WARMUP=1 TRAIN_STEPS=1 THREADS=1 bench/compare.sh
#
# The reference runs in a throw-away venv (bench/.venv): torch, transformers 4.x, onnxruntime,
# openvino, optimum-intel and nncf.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
SKIP_LARGE=${SKIP_LARGE:-0}
OPENVINO=${OPENVINO:-1}
SHARED=${BERTQA_SHARED:-../shared}
MODEL=$SHARED/models/minilm-xquad-qa
DATA=${DATA:-$SHARED/data/xquad-en-train.json}
WORK=${WORK:-bench/out/compare}
LAYERS=${LAYERS:-0}   # 0: the real depth (12 / 24)
ITERS_B1=${ITERS_B1:-5}
ITERS_B8=${ITERS_B8:-2}
ROUNDS=${ROUNDS:-3}
EVAL_PARTS=${EVAL_PARTS:-4}
TRAIN_WARMUP=${TRAIN_WARMUP:-2}
TRAIN_STEPS=${TRAIN_STEPS:-4}
TRAIN_BATCH=${TRAIN_BATCH:-16}
TRAIN_SEQ=${TRAIN_SEQ:-384}
VENV=bench/.venv
PY=$VENV/bin/python

die() { echo "error: $*" >&2; exit 1; }
step() { echo "== $* ($(date +%H:%M:%S))" >&2; }

[ -d "$MODEL" ] || die "$MODEL not found: set BERTQA_SHARED to the shared reference directory"
[ -f "$DATA" ] || die "$DATA not found: set DATA, or BERTQA_SHARED to the shared reference directory"
mkdir -p "$WORK"

if [ ! -x "$PY" ]; then
  step "creating $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
fi
# bench/train_minilm.sh may have made the venv with the base checkpoint alone.
if ! "$PY" -c 'import torch, transformers, safetensors' 2>/dev/null; then
  step "installing torch and transformers 4.x into $VENV"
  "$VENV/bin/pip" install -q torch 'transformers<5' safetensors
fi
if ! "$PY" -c 'import onnxruntime, onnx' 2>/dev/null; then
  step "installing onnxruntime and onnx into $VENV"
  "$VENV/bin/pip" install -q onnxruntime onnx
fi
# optimum-intel 2.2 (openvino 2026, nncf 3) takes transformers >=4.51,<5.6, so it resolves with
# transformers 4.x and the venv's torch; the range is the one tried, the same as bench/archs.sh's.
# A failed install is not fatal: the OpenVINO rows then report the import error.
if [ "$OPENVINO" != 0 ] && ! "$PY" -c 'import openvino, nncf; from optimum.intel import OVModelForQuestionAnswering' 2>/dev/null; then
  step "installing openvino, optimum-intel and nncf into $VENV"
  "$VENV/bin/pip" install -q 'optimum-intel[openvino]>=2.2,<2.3' 'openvino>=2026.0,<2027' 'nncf>=3.3,<4' 'transformers<5' ||
    step "warning: installing OpenVINO failed; its rows will say why"
fi
BASE=$(bench/minilm_base.sh "$VENV")

if [ -n "${BIN_DIR:-}" ]; then
  [ -x "$BIN_DIR/bertqa" ] && [ -x "$BIN_DIR/examples/forward_timing" ] ||
    die "BIN_DIR=$BIN_DIR must hold bertqa and examples/forward_timing (cargo build --release --bin bertqa --example forward_timing)"
else
  step "cargo build --release"
  cargo build --release -q
  cargo build --release -q --example forward_timing
  BIN_DIR=${CARGO_TARGET_DIR:-target}/release
fi
BERTQA=$BIN_DIR/bertqa
FORWARD_TIMING=$BIN_DIR/examples/forward_timing

# The CPU heads the table: OpenVINO's precision, and so its figures, depend on it (AMX,
# AVX512-BF16).
cpu_line() {
  LC_ALL=C lscpu 2>/dev/null | awk -F': *' '
    /^Model name:/ {n = $2} /^CPU family:/ {f = $2} /^Model:/ {m = $2} /^Flags:/ {fl = " " $2 " "}
    END {
      if (n == "") exit 1
      printf "%s (family %s, model %s; AMX-BF16: %s, AVX512-BF16: %s)\n", n, f, m,
        (fl ~ / amx_bf16 /) ? "yes" : "no", (fl ~ / avx512_bf16 /) ? "yes" : "no"
    }'
}
cpu_line > "$WORK/cpu.txt" || echo "unknown (no lscpu)" > "$WORK/cpu.txt"

# Runs one OpenVINO case: its JSON report to OUT, its log beside it (OUT less .json, .log); a
# failure is left there for the table and the run goes on.
openvino_case() {
  local out=$1
  shift
  "$@" > "$out" 2> "${out%.json}.log" || step "warning: $(basename "$out" .json) failed (see ${out%.json}.log); going on"
}

# 1. Evaluation: the pipeline one question per call, bertqa eval f32 and int8, and the pipeline
#    around OpenVINO at its default precision and f32. They take turns on EVAL_PARTS parts of
#    the data (articles dealt round-robin), so that a drift in the machine's speed hits them
#    alike.
PARTS=$WORK/eval-parts
rm -rf "$PARTS"
"$PY" bench/reference.py split "$DATA" "$EVAL_PARTS" "$PARTS" >/dev/null
ov_eval=""
[ "$OPENVINO" = 0 ] || ov_eval=", pipeline + OpenVINO default and f32"
for i in $(seq 0 $((EVAL_PARTS - 1))); do
  part=$PARTS/part-$i.json
  step "eval part $((i + 1))/$EVAL_PARTS: transformers pipeline, bertqa eval f32, bertqa eval --quantize int8$ov_eval"
  THREADS=$THREADS "$PY" bench/reference.py pipeline "$MODEL" "$part" "$WORK" \
    --predictions "$PARTS/torch-$i.predictions.json" > "$PARTS/torch-$i.json"
  "$BERTQA" eval --threads "$THREADS" --model "$MODEL" --data "$part" --json \
    --predictions "$PARTS/bertqa-$i.predictions.json" > "$PARTS/bertqa-$i.json"
  "$BERTQA" eval --threads "$THREADS" --model "$MODEL" --data "$part" --json --quantize int8 \
    --predictions "$PARTS/bertqa_int8-$i.predictions.json" > "$PARTS/bertqa_int8-$i.json"
  if [ "$OPENVINO" != 0 ]; then
    openvino_case "$PARTS/openvino-$i.json" env THREADS="$THREADS" "$PY" bench/reference.py pipeline "$MODEL" "$part" \
      "$WORK" --openvino default --predictions "$PARTS/openvino-$i.predictions.json"
    openvino_case "$PARTS/openvino_f32-$i.json" env THREADS="$THREADS" "$PY" bench/reference.py pipeline "$MODEL" "$part" \
      "$WORK" --openvino f32 --predictions "$PARTS/openvino_f32-$i.predictions.json"
  fi
done

# 2. Cold start: a fresh process that loads the model and answers one question.
step "cold start"
t0=$(date +%s%N)
"$PY" bench/cold_start.py "$MODEL" >/dev/null 2>&1 || die "bench/cold_start.py failed: run it by hand to see why"
t1=$(date +%s%N)
"$BERTQA" ask --threads "$THREADS" --model "$MODEL" -q "Who won?" -c "Marie Curie won the Nobel Prize in 1903." >/dev/null
t2=$(date +%s%N)
echo "{\"torch_cold_s\": $(( (t1 - t0) / 1000000 ))e-3, \"bertqa_cold_s\": $(( (t2 - t1) / 1000000 ))e-3}" > "$WORK/cold.json"

# 3. Forward latency at 384 tokens, random weights (the same checkpoint for every engine). The
#    engines take turns, ROUNDS times, so that a drift in the machine's speed hits them alike.
#    OpenVINO (default precision, f32, NNCF int8) times each call in a process of its own, as
#    bertqa does, so that a crash of one of its cases costs that case alone.
sizes=base
[ "$SKIP_LARGE" = 1 ] || sizes="base large"
ov_forward=() ov_names=""
[ "$OPENVINO" = 0 ] || { ov_forward=(--openvino); ov_names=", OpenVINO default/f32/int8"; }
for size in $sizes; do
  step "bert-$size: PyTorch fp32/bf16, ONNX Runtime fp32/int8, bertqa f32/int8$ov_names, taking turns"
  THREADS=$THREADS "$PY" bench/reference.py forward "$size" "$MODEL" "$WORK" --layers "$LAYERS" \
    --iters-b1 "$ITERS_B1" --iters-b8 "$ITERS_B8" --rounds "$ROUNDS" --bertqa "$FORWARD_TIMING" \
    "${ov_forward[@]}" > "$WORK/torch_forward_$size.json"
done

# 4. Training step: MiniLM-L6 base + new QA head, batch 16 x 384 tokens, fp32, AdamW; bertqa's
#    per-step times come from its -v log (forward_s, backward_s, optimizer_s). The CPU is named
#    with the figures: a fresh head's backward pass makes subnormal floats, which cost Intel
#    cores far more than AMD ones where they are not flushed (bench/subnormals.sh measures it).
if [ -r /proc/cpuinfo ]; then
  CPU=$(awk -F': ' '/^vendor_id/ {v=$2} /^cpu family/ {f=$2} /^model\t/ {m=$2} /^model name/ {n=$2}
    END {printf "%s family %s model %s (%s)", v, f, m, n; exit}' /proc/cpuinfo)
else
  CPU="unknown (no /proc/cpuinfo)"
fi
case "${BERTQA_KEEP_SUBNORMALS:-}" in
  "" | 0) FLUSH="subnormals flushed" ;;
  *) FLUSH="subnormals kept (BERTQA_KEEP_SUBNORMALS=$BERTQA_KEEP_SUBNORMALS)" ;;
esac
echo "$CPU; bertqa: $FLUSH" > "$WORK/train_cpu.txt"
step "training step: PyTorch"
THREADS=$THREADS "$PY" bench/reference.py train "$BASE" --batch-size "$TRAIN_BATCH" --max-seq-len "$TRAIN_SEQ" \
  --warmup "$TRAIN_WARMUP" --steps "$TRAIN_STEPS" > "$WORK/torch_train.json"
step "training step: bertqa train"
rm -rf "$WORK/bertqa-train-out"
"$BERTQA" train --model "$BASE" --train-data "$DATA" --output "$WORK/bertqa-train-out" \
  --max-steps $((TRAIN_WARMUP + TRAIN_STEPS)) --batch-size "$TRAIN_BATCH" --max-seq-len "$TRAIN_SEQ" \
  --doc-stride $((TRAIN_SEQ / 3)) --learning-rate 1e-4 --weight-decay 0.01 --threads "$THREADS" -v 2> "$WORK/bertqa_train.log" >/dev/null ||
  { tail -5 "$WORK/bertqa_train.log" >&2; die "bertqa train failed (log: $WORK/bertqa_train.log)"; }
"$PY" bench/summary.py train-log "$WORK/bertqa_train.log" "$TRAIN_WARMUP" > "$WORK/bertqa_train.json"

echo
"$PY" bench/summary.py "$WORK"
echo
echo "training step CPU: $(cat "$WORK/train_cpu.txt")"
echo
echo "raw results: $WORK" >&2
