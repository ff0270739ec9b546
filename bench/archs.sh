#!/usr/bin/env bash
# Every architecture bertqa runs, at base size, against transformers' question-answering
# pipeline on this machine, and against the same pipeline around OpenVINO (optimum-intel): one
# markdown table of questions/s (f32 and int8) and peak memory, measured in one run. Not part of
# CI.
#
#   bench/archs.sh                   # 40 questions, 2 parts (about 15 minutes on 2 cores with
#                                    # OPENVINO=0; the OpenVINO runs add to that)
#
# Environment:
#   THREADS=2        threads of every engine (bertqa --threads, torch.set_num_threads, OpenVINO
#                    INFERENCE_NUM_THREADS)
#   QUESTIONS=40     the first N questions of DATA
#   PARTS=2          parts of those questions on which the engines take turns, so that a drift
#                    in the machine's speed hits them alike
#   ARCHS="..."      a subset of: bert-uncased distilbert-cased roberta xlm-roberta electra
#                    albert deberta-v3 mobilebert
#   WORK=bench/out/archs   checkpoints (kept), data parts, raw JSON and logs
#   BIN=path         the bertqa binary (default: cargo build --release)
#   OPENVINO=0       skip the OpenVINO runs (and their install). Otherwise optimum-intel's
#                    OVModelForQuestionAnswering (export=True) runs in transformers' pipeline at
#                    OpenVINO's default precision (bf16 on CPUs with AMX or AVX512-BF16, f32
#                    elsewhere), PERFORMANCE_HINT LATENCY; an architecture it cannot export is
#                    reported in its row ("export failed: ...") and the run goes on
#
# The checkpoints are random weights at base dimensions (12 layers, hidden 768, 12 heads, FFN
# 3072; DistilBERT 6 layers; MobileBERT at google/mobilebert-uncased's shape) made with
# transformers from the shared fixtures' configs, so tokenizers and options are the fixtures'.
# Random weights answer nonsense with nearly flat scores (EM/F1 and answer agreement mean nothing
# here); the golden tests hold the answers to transformers'.
#
# A second table (bench/flops.py) gives the encoders' arithmetic per run in GFLOP/s beside the
# CPU's f32 multiply-add ceiling (examples/fma_peak): a 2x speed-up over an engine that runs
# the same operations needs twice its rate.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
QUESTIONS=${QUESTIONS:-40}
PARTS=${PARTS:-2}
OPENVINO=${OPENVINO:-1}
# Default: every fixture with a golden.json (one per architecture), less the .bin copy of BERT.
default_archs() {
  for golden in "${BERTQA_SHARED:-../shared}"/fixtures/*/golden.json; do
    name=$(basename "$(dirname "$golden")")
    [[ $name == *-pytorch-bin ]] || printf '%s ' "$name"
  done
}
ARCHS=${ARCHS:-$(default_archs)}
SHARED=${BERTQA_SHARED:-../shared}
DATA=${DATA:-$SHARED/data/xquad-en-train.json}
WORK=${WORK:-bench/out/archs}
VENV=bench/.venv
PY=$VENV/bin/python

die() { echo "error: $*" >&2; exit 1; }
step() { echo "== $* ($(date +%H:%M:%S))" >&2; }

[ -d "$SHARED/fixtures" ] || die "$SHARED/fixtures not found: set BERTQA_SHARED to the shared reference directory"
[ -f "$DATA" ] || die "$DATA not found"
[ -x /usr/bin/time ] || die "/usr/bin/time is needed for peak memory (apt-get install time)"
if [ ! -x "$PY" ]; then
  step "creating $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
fi
if ! "$PY" -c 'import torch, transformers, safetensors, sentencepiece' 2>/dev/null; then
  step "installing torch and transformers 4.x into $VENV"
  "$VENV/bin/pip" install -q torch 'transformers<5' safetensors sentencepiece protobuf
fi
# optimum-intel 2.2 (openvino 2026, nncf 3) takes transformers >=4.51,<5.6, so it resolves with
# transformers 4.x and the venv's torch; the range is the one tried, the same as bench/compare.sh's.
# A failed install is not fatal: the OpenVINO cells then report the import error.
if [ "$OPENVINO" != 0 ] && ! "$PY" -c 'import openvino, nncf; from optimum.intel import OVModelForQuestionAnswering' 2>/dev/null; then
  step "installing openvino, optimum-intel and nncf into $VENV"
  "$VENV/bin/pip" install -q 'optimum-intel[openvino]>=2.2,<2.3' 'openvino>=2026.0,<2027' 'nncf>=3.3,<4' 'transformers<5' ||
    step "warning: installing OpenVINO failed; its cells will say why"
fi
if [ -z "${BIN:-}" ]; then
  step "cargo build --release"
  cargo build --release -q --bin bertqa --example fma_peak
  BIN=${CARGO_TARGET_DIR:-target}/release/bertqa
fi
PEAK_BIN=${PEAK_BIN:-$(dirname "$BIN")/examples/fma_peak}

mkdir -p "$WORK/runs"
step "base-sized checkpoints"
"$PY" bench/archs.py make "$SHARED/fixtures" "$WORK/models"
"$PY" bench/archs.py subset "$DATA" "$QUESTIONS" "$WORK/q$QUESTIONS.json"
rm -rf "$WORK/parts"
"$PY" bench/archs.py split "$WORK/q$QUESTIONS.json" "$PARTS" "$WORK/parts"

# Each run writes RUN.json (its report) and RUN.mem (peak resident memory in KiB).
measure() {
  local run=$1
  shift
  /usr/bin/time -f %M -o "$WORK/runs/$run.mem" "$@" > "$WORK/runs/$run.json" 2> "$WORK/runs/$run.log" ||
    die "$run failed: see $WORK/runs/$run.log"
}
# The same for an OpenVINO run, which must not stop the others: it fails (status 1) when the run
# exited non-zero or reported an error, which is left in RUN.json / RUN.log for the table.
measure_openvino() {
  local run=$1
  shift
  if /usr/bin/time -f %M -o "$WORK/runs/$run.mem" "$@" > "$WORK/runs/$run.json" 2> "$WORK/runs/$run.log" &&
    "$PY" -c 'import json, sys; sys.exit("error" in json.load(open(sys.argv[1])))' "$WORK/runs/$run.json" 2>/dev/null; then
    return 0
  fi
  step "warning: $run failed (see $WORK/runs/$run.log); going on"
  return 1
}

ov_names=""
[ "$OPENVINO" = 0 ] || ov_names=", pipeline + OpenVINO"
rm -f "$WORK"/runs/*-openvino-*
for arch in $ARCHS; do
  model=$WORK/models/$arch
  ov_ok=1
  for i in $(seq 0 $((PARTS - 1))); do
    part=$WORK/parts/part-$i.json
    step "$arch, part $((i + 1))/$PARTS: pipeline, bertqa f32, bertqa int8$ov_names"
    THREADS=$THREADS measure "$arch-pipeline-$i" "$PY" bench/reference.py pipeline "$model" "$part" "$WORK" \
      --predictions "$WORK/runs/$arch-pipeline-$i.predictions.json"
    measure "$arch-f32-$i" "$BIN" eval --threads "$THREADS" --model "$model" --data "$part" --json \
      --predictions "$WORK/runs/$arch-f32-$i.predictions.json"
    measure "$arch-int8-$i" "$BIN" eval --threads "$THREADS" --model "$model" --data "$part" --json \
      --quantize int8 --predictions "$WORK/runs/$arch-int8-$i.predictions.json"
    # An architecture that failed on one part (export) is not tried on the next.
    if [ "$OPENVINO" != 0 ] && [ "$ov_ok" = 1 ]; then
      THREADS=$THREADS measure_openvino "$arch-openvino-$i" "$PY" bench/reference.py pipeline "$model" "$part" \
        "$WORK" --openvino default --predictions "$WORK/runs/$arch-openvino-$i.predictions.json" || ov_ok=0
    fi
  done
done

"$PY" bench/archs.py table "$WORK/runs" "$PARTS" "$OPENVINO" $ARCHS

# Where the time goes: the encoders' arithmetic over the questions, each engine's rate, and the
# CPU's f32 multiply-add ceiling on the same threads.
echo
if [ -x "$PEAK_BIN" ]; then
  echo "f32 multiply-add ceiling of this CPU on $THREADS threads (examples/fma_peak): $("$PEAK_BIN" "$THREADS")"
  echo
fi
QUESTIONS=$QUESTIONS "$PY" bench/flops.py "$WORK" "$PARTS" $ARCHS
