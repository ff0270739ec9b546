#!/usr/bin/env bash
# Packs what bench/gpu.sh needs on a GPU machine that has neither Rust nor the reference folder
# into target/gpu-pack, small enough to copy there in one piece:
#
#   bench/cuda-build.sh && bench/gpu-pack.sh        # here
#   BERTQA_SHARED=target/gpu-pack/shared bench/gpu.sh target/gpu-pack/bin   # there
#
# - bin/bertqa.xz, bin/device_check.xz: the CUDA binaries without debug information, compressed
#   (about 9 MB each; bench/gpu.sh unpacks them);
# - shared/fixtures and shared/data/xquad-en-train.json from BERTQA_SHARED (default ../shared),
#   about 40 MB;
# - with MINILM=1 also shared/models/minilm-xquad-qa (about 90 MB more; without it bench/gpu.sh
#   skips the MiniLM steps and times the training step on BERT-base alone).
# The sizes are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${1:-target/cuda-bin}
SHARED=${BERTQA_SHARED:-../shared}
PACK=target/gpu-pack

die() { echo "error: $*" >&2; exit 1; }
for bin in "$BIN_DIR/bertqa" "$BIN_DIR/device_check"; do
  [ -x "$bin" ] || die "$bin not found: build it with bench/cuda-build.sh"
  # Only a build without the feature holds this message.
  if grep -qa "built without CUDA support" "$bin"; then
    die "$bin was built without the cuda feature: run bench/cuda-build.sh"
  fi
done
[ -d "$SHARED/fixtures" ] || die "$SHARED/fixtures not found: set BERTQA_SHARED"

rm -rf "$PACK"
mkdir -p "$PACK/bin" "$PACK/shared/data" "$PACK/shared/models"
for bin in "$BIN_DIR/bertqa" "$BIN_DIR/device_check"; do
  name=$(basename "$bin")
  objcopy --strip-debug "$bin" "$PACK/bin/$name"
  xz -T0 -6 "$PACK/bin/$name"
done
cp -rL "$SHARED/fixtures" "$PACK/shared/fixtures"
cp -L "$SHARED/data/xquad-en-train.json" "$PACK/shared/data/"
if [ "${MINILM:-0}" = 1 ]; then
  cp -rL "$SHARED/models/minilm-xquad-qa" "$PACK/shared/models/"
fi
du -shc "$PACK/bin" "$PACK/shared"
