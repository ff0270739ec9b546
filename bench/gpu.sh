#!/usr/bin/env bash
# bertqa on an NVIDIA GPU against PyTorch on the same GPU, from binaries built elsewhere: no
# cargo needed here, only the binaries, python3 with torch and transformers, and the reference
# folder (BERTQA_SHARED, default ../shared). Not part of CI.
#
#   bench/cuda-build.sh                      # where Rust is: bertqa and examples/device_check
#   bench/gpu.sh [BIN_DIR]                   # where the GPU is (BIN_DIR default target/cuda-bin)
#
# BIN_DIR holds bertqa and examples/device_check (or device_check), or the compressed ones that
# bench/gpu-pack.sh writes (bertqa.xz, device_check.xz), which are unpacked into WORK.
#
# Steps, each logged to WORK (default bench/out/gpu), one summary at the end:
#   1. the golden files on the GPU in f32 (logits within 1e-3, answers identical), and in bf16
#      (differences reported); the MiniLM checkpoint's 894 answers when the model is present;
#   2. the training-step fixtures on the GPU (loss, gradients, one AdamW step vs PyTorch);
#   3. forward latency of BERT-base and BERT-large (random weights, 384 tokens, batch 1, 8, 64),
#      fp32 and bf16, bertqa vs PyTorch on the same weights;
#   4. `bertqa eval` of the MiniLM checkpoint on the XQuAD file, f32 and bf16, vs a PyTorch loop;
#   5. a training step (batch 16 × 384) of MiniLM and BERT-base, f32 and bf16 mixed precision.
# Environment: BERTQA_SHARED, WORK, PY (default python3), ITERS (forward, default 20),
# SKIP_LARGE=1 (no BERT-large), DEVICE (default cuda:0).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${1:-target/cuda-bin}
SHARED=${BERTQA_SHARED:-../shared}
WORK=${WORK:-bench/out/gpu}
PY=${PY:-python3}
ITERS=${ITERS:-20}
DEVICE=${DEVICE:-cuda:0}
mkdir -p "$WORK"
# Binaries packed by bench/gpu-pack.sh come compressed.
if [ -f "$BIN_DIR/bertqa.xz" ] && [ -f "$BIN_DIR/device_check.xz" ]; then
  mkdir -p "$WORK/bin"
  for name in bertqa device_check; do
    xz -dc "$BIN_DIR/$name.xz" >"$WORK/bin/$name"
    chmod +x "$WORK/bin/$name"
  done
  BIN_DIR=$WORK/bin
fi
BERTQA=$BIN_DIR/bertqa
CHECK=$BIN_DIR/examples/device_check
[ -x "$CHECK" ] || CHECK=$BIN_DIR/device_check
MINILM=$SHARED/models/minilm-xquad-qa
DATA=$SHARED/data/xquad-en-train.json
TOKENIZER=$SHARED/fixtures/bert-uncased

die() { echo "error: $*" >&2; exit 1; }
step() { echo "== $* ($(date +%H:%M:%S))" >&2; }
[ -x "$BERTQA" ] && [ -x "$CHECK" ] || die "$BIN_DIR must hold bertqa and examples/device_check (bench/cuda-build.sh)"
for bin in "$BERTQA" "$CHECK"; do
  if grep -qa "built without CUDA support" "$bin"; then
    die "$bin was built without the cuda feature (bench/cuda-build.sh builds it with)"
  fi
done
[ -d "$SHARED/fixtures" ] || die "$SHARED/fixtures not found: set BERTQA_SHARED"
mkdir -p "$WORK"
export BERTQA_SHARED=$SHARED

# The binary links the CUDA 13 libraries by name: find them in a CUDA toolkit or in the
# nvidia-* wheels that PyTorch brought.
dirs=$("$PY" - <<'EOF'
import glob, os, site, sys
roots = [os.environ.get("CUDA_HOME", "/usr/local/cuda")]
roots += site.getsitepackages() + [site.getusersitepackages()]
found = []
for lib in ["libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13", "libcudart.so.13"]:
    for root in roots:
        hits = glob.glob(f"{root}/lib64/{lib}") + glob.glob(f"{root}/nvidia/*/lib/{lib}") + glob.glob(f"{root}/nvidia/cu13/lib/{lib}")
        if hits:
            found.append(os.path.dirname(hits[0]))
            break
print(":".join(dict.fromkeys(found)))
EOF
)
export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing=$(ldd "$BERTQA" | grep "not found" || true)
[ -z "$missing" ] || die "CUDA libraries not found (install CUDA 13's cuBLAS, cuRAND, NVRTC and runtime, or set LD_LIBRARY_PATH):
$missing"
nvidia-smi -L >&2 || true

failed=0
step "1. golden files on $DEVICE"
minilm_flag=()
[ -f "$MINILM/model.safetensors" ] && minilm_flag=(--minilm)
"$CHECK" golden --device "$DEVICE" --dtype f32 "${minilm_flag[@]}" | tee "$WORK/golden-f32.log" || failed=1
"$CHECK" golden --device "$DEVICE" --dtype bf16 "${minilm_flag[@]}" | tee "$WORK/golden-bf16.log" || true

step "2. training-step fixtures on $DEVICE"
"$CHECK" train-step --device "$DEVICE" | tee "$WORK/train-step.log" || failed=1

step "3. forward latency"
sizes=(base large)
[ "${SKIP_LARGE:-0}" = 1 ] && sizes=(base)
for size in "${sizes[@]}"; do
  "$PY" bench/gpu_reference.py forward "$size" "$TOKENIZER" "$WORK" --iters "$ITERS" >"$WORK/torch-forward-$size.json"
  for dtype in f32 bf16; do
    for batch in 1 8 64; do
      "$CHECK" forward "$WORK/bert-$size-random" --device "$DEVICE" --dtype "$dtype" --batch "$batch" --iters "$ITERS"
    done
  done >"$WORK/bertqa-forward-$size.jsonl"
done

if [ -f "$MINILM/model.safetensors" ] && [ -f "$DATA" ]; then
  step "4. MiniLM eval on the XQuAD file"
  for dtype in f32 bf16; do
    "$BERTQA" eval --model "$MINILM" --data "$DATA" --device "$DEVICE" --dtype "$dtype" --batch-size 64 --json >"$WORK/bertqa-eval-$dtype.json"
  done
  for dtype in fp32 bf16; do
    "$PY" bench/gpu_reference.py eval "$MINILM" "$DATA" --dtype "$dtype" >"$WORK/torch-eval-$dtype.json"
  done
else
  echo "skipped: $MINILM or $DATA is missing" >&2
fi

step "5. training step, batch 16 × 384"
train_models=("$WORK/bert-base-random")
[ -f "$MINILM/model.safetensors" ] && train_models=("$MINILM" "${train_models[@]}")
for model in "${train_models[@]}"; do
  name=$(basename "$model")
  for dtype in f32 bf16; do
    "$CHECK" train "$model" --device "$DEVICE" --dtype "$dtype" --batch 16 --seq 384 >"$WORK/bertqa-train-$name-$dtype.json"
  done
  for dtype in fp32 bf16; do
    "$PY" bench/gpu_reference.py train "$model" --dtype "$dtype" >"$WORK/torch-train-$name-$dtype.json"
  done
done

step "summary"
"$PY" - "$WORK" <<'EOF'
import glob, json, os, sys
work = sys.argv[1]
def load(path):
    return json.load(open(path)) if os.path.exists(path) else None
rows = []
for path in sorted(glob.glob(f"{work}/bertqa-forward-*.jsonl")):
    size = path.rsplit("-", 1)[1].split(".")[0]
    torch = load(f"{work}/torch-forward-{size}.json") or {}
    for line in open(path):
        r = json.loads(line)
        ref = torch.get(f"{'fp32' if r['dtype'] == 'f32' else 'bf16'}_b{r['batch']}_ms")
        if ref:
            rows.append((f"BERT-{size} forward, 384 tokens, batch {r['batch']}, {r['dtype']}",
                         f"{r['ms_per_batch']:.2f} ms", f"{ref:.2f} ms", f"{r['ms_per_batch'] / ref:.2f}x time"))
for dtype, tdtype in [("f32", "fp32"), ("bf16", "bf16")]:
    ours, ref = load(f"{work}/bertqa-eval-{dtype}.json"), load(f"{work}/torch-eval-{tdtype}.json")
    if ours and ref:
        rows.append((f"MiniLM eval, 894 questions, {dtype}", f"{ours['questions_per_second']:.1f} q/s",
                     f"{ref['questions_per_s']:.1f} q/s", f"{ours['questions_per_second'] / ref['questions_per_s']:.2f}x speed"))
for path in sorted(glob.glob(f"{work}/bertqa-train-*.json")):
    stem = os.path.basename(path)[len("bertqa-train-"):-len(".json")]
    name, dtype = stem.rsplit("-", 1)
    ours, ref = load(path), load(f"{work}/torch-train-{name}-{'fp32' if dtype == 'f32' else 'bf16'}.json")
    if ours and ref:
        rows.append((f"training step {name}, 16 x 384, {dtype}", f"{ours['examples_per_s']:.1f} ex/s",
                     f"{ref['examples_per_s']:.1f} ex/s", f"{ours['examples_per_s'] / ref['examples_per_s']:.2f}x speed"))
print("| measure | bertqa | PyTorch | ratio |\n|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
EOF
[ "$failed" = 0 ] || die "a GPU check failed (logs in $WORK)"
