#!/usr/bin/env bash
# What flushing subnormal floats is worth to a training step on this CPU: `bertqa train` steps on
# MiniLM with a freshly initialised QA head, with the flush (the default) and without it
# (BERTQA_KEEP_SUBNORMALS=1), and the warm (trained) head without it. Prints the CPU, the
# per-step seconds and the ratios. On Intel cores, which take a microcode assist on every
# operation with a subnormal operand or result, "fresh, kept / fresh, flushed" was about 6; on
# AMD Zen it stays near 1. Not part of CI.
#
#   bench/subnormals.sh
#
# Environment:
#   THREADS=2  BATCH=16  SEQ=384  WARMUP=1  STEPS=3     threads, batch, window, steps left out / timed
#   BASE=DIR   checkpoint to put a fresh head on (default: the shared MiniLM QA model, head removed)
#   WORK=bench/out/subnormals   logs and the headless checkpoint
#   BIN_DIR=DIR   take bertqa from DIR instead of building it
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
BATCH=${BATCH:-16}
SEQ=${SEQ:-384}
WARMUP=${WARMUP:-1}
STEPS=${STEPS:-3}
SHARED=${BERTQA_SHARED:-../shared}
WARM=$SHARED/models/minilm-xquad-qa
DATA=${DATA:-$SHARED/data/xquad-en-train.json}
WORK=${WORK:-bench/out/subnormals}

die() { echo "error: $*" >&2; exit 1; }
step() { echo "== $* ($(date +%H:%M:%S))" >&2; }

[ -d "$WARM" ] || die "$WARM not found: set BERTQA_SHARED to the shared reference directory"
[ -f "$DATA" ] || die "$DATA not found: set DATA, or BERTQA_SHARED to the shared reference directory"
mkdir -p "$WORK"

if [ -n "${BIN_DIR:-}" ]; then
  [ -x "$BIN_DIR/bertqa" ] || die "BIN_DIR=$BIN_DIR must hold bertqa (cargo build --release --bin bertqa)"
else
  step "cargo build --release"
  cargo build --release -q --bin bertqa
  BIN_DIR=${CARGO_TARGET_DIR:-target}/release
fi
BERTQA=$BIN_DIR/bertqa

# The trained model less its qa_outputs tensors: `bertqa train` gives it a fresh head, as on a
# base checkpoint (plain Python: safetensors is a JSON header and the tensors' bytes).
if [ -z "${BASE:-}" ]; then
  BASE=$WORK/headless
  step "checkpoint without a QA head: $BASE"
  rm -rf "$BASE"
  mkdir -p "$BASE"
  for f in "$WARM"/*; do
    [ "$(basename "$f")" = model.safetensors ] || cp "$f" "$BASE/"
  done
  python3 - "$WARM/model.safetensors" "$BASE/model.safetensors" <<'EOF'
import json, struct, sys
src, dst = sys.argv[1:]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
meta = header.pop("__metadata__", None)
kept, out, at = {}, [], 0
for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    if name.startswith("qa_outputs."):
        continue
    a, b = t["data_offsets"]
    kept[name] = dict(t, data_offsets=[at, at + b - a])
    out.append(data[a:b])
    at += b - a
if meta is not None:
    kept["__metadata__"] = meta
raw = json.dumps(kept).encode()
raw += b" " * (-len(raw) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(raw)) + raw + b"".join(out))
if len(kept) == len(header) + (meta is not None):
    sys.exit(f"{src}: no qa_outputs tensors to remove")
EOF
fi

cpu() {
  if [ -r /proc/cpuinfo ]; then
    awk -F': ' '/^vendor_id/ {v=$2} /^cpu family/ {f=$2} /^model\t/ {m=$2} /^model name/ {n=$2}
      END {printf "%s family %s model %s (%s)", v, f, m, n; exit}' /proc/cpuinfo
  else
    echo "unknown (no /proc/cpuinfo)"
  fi
}

# run NAME MODEL [ENV...]: timed steps of `bertqa train`, as JSON in $WORK/NAME.json.
run() {
  local name=$1 model=$2
  shift 2
  step "bertqa train: $name"
  rm -rf "$WORK/out-$name"
  env "$@" "$BERTQA" train --model "$model" --train-data "$DATA" --output "$WORK/out-$name" \
    --max-steps $((WARMUP + STEPS)) --batch-size "$BATCH" --max-seq-len "$SEQ" \
    --doc-stride $((SEQ / 3)) --learning-rate 1e-4 --threads "$THREADS" -v \
    2> "$WORK/$name.log" >/dev/null ||
    { tail -5 "$WORK/$name.log" >&2; die "bertqa train failed (log: $WORK/$name.log)"; }
  python3 bench/summary.py train-log "$WORK/$name.log" "$WARMUP" > "$WORK/$name.json"
}

run fresh-flushed "$BASE"
run fresh-kept "$BASE" BERTQA_KEEP_SUBNORMALS=1
run warm-kept "$WARM" BERTQA_KEEP_SUBNORMALS=1

python3 - "$WORK" "$(cpu)" "$THREADS" "$BATCH" "$SEQ" "$STEPS" <<'EOF'
import json, os, sys
work, cpu, threads, batch, seq, steps = sys.argv[1:]
r = {n: json.load(open(os.path.join(work, n + ".json"))) for n in ("fresh-flushed", "fresh-kept", "warm-kept")}
print(f"CPU: {cpu}")
print(f"bertqa train, batch {batch} x {seq} tokens, {threads} threads, mean of {steps} steps (s)")
print(f"{'case':<14} {'forward':>8} {'backward':>9} {'optimizer':>10} {'step':>8}")
for n, x in r.items():
    print(f"{n:<14} {x['forward_s']:8.3f} {x['backward_s']:9.3f} {x['optimizer_s']:10.3f} {x['step_s']:8.3f}")
flushed, kept, warm = (r[n]["step_s"] for n in r)
print(f"fresh head, subnormals kept / flushed: {kept / flushed:.2f}x")
print(f"subnormals kept, fresh head / warm head: {kept / warm:.2f}x")
EOF
