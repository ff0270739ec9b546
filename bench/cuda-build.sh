#!/usr/bin/env bash
# Builds bertqa with the `cuda` feature on a machine without a CUDA toolkit or GPU, from PyPI's
# CUDA wheels, for NVIDIA GPUs of compute capability CUDA_COMPUTE_CAP (default 90: H100/H200).
#
#   bench/cuda-build.sh                       # target/cuda-bin/{bertqa,device_check}
#   bench/cuda-build.sh --example device_check   # any cargo build arguments instead
#
# What it sets up under target/ (nothing outside the repository):
# - target/cuda-venv: nvcc, its NVVM/crt parts, the CUDA runtime headers and libcudart, and CCCL,
#   all CUDA 13.0 (nvcc 13.0's PTX needs an R580 driver or newer; the H200s here run 580);
# - target/cuda-link: link-time stand-ins for the CUDA libraries that candle links dynamically
#   (libcuda.so.1, libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13):
#   empty functions under the names cudarc declares, with the real libraries' sonames, so that
#   the binary links here and loads the real libraries where it runs. They are never run.
#
# Where the binary runs it needs the NVIDIA driver (libcuda.so.1) and the CUDA 13 cuBLAS,
# cuRAND, NVRTC and runtime libraries: those of a CUDA 13 toolkit, or of PyTorch's CUDA 13
# wheels (bench/gpu.sh finds them). With a CUDA toolkit installed, a plain
# `CUDA_COMPUTE_CAP=90 cargo build --release --features cuda` does the same as this script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/cuda-venv
LINK=target/cuda-link
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

if [ ! -x "$VENV/bin/pip" ]; then
  python3 -m venv "$VENV" || { echo "error: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
fi
# Pinned together: nvcc's parts must be of one release (a newer NVVM writes PTX its ptxas
# rejects).
"$VENV/bin/pip" install -q --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
CUDA_ROOT=$(cd "$VENV"/lib/python3*/site-packages/nvidia/cu13 && pwd)
export PATH="$CUDA_ROOT/bin:$PATH" NVCC="$CUDA_ROOT/bin/nvcc"
nvcc --version | tail -2

# Link-time stand-ins, from the functions cudarc (the version in Cargo.lock) declares.
cudarc=$(cargo metadata --format-version 1 --features cuda --locked 2>/dev/null |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')
mkdir -p "$LINK"
stub() { # module soname name
  local module=$1 soname=$2 name=$3
  local src="$LINK/$name.c"
  sed -n 's/^pub unsafe fn \([A-Za-z0-9_]*\)(.*/void \1(void) {}/p' "$cudarc/src/$module/sys/mod.rs" | sort -u >"$src"
  [ -s "$src" ] || { echo "error: no functions found in $cudarc/src/$module/sys/mod.rs" >&2; exit 1; }
  cc -shared -fPIC -o "$LINK/$name" -Wl,-soname,"$soname" "$src"
}
stub driver libcuda.so.1 libcuda.so
stub cublas libcublas.so.13 libcublas.so
stub cublaslt libcublasLt.so.13 libcublasLt.so
stub curand libcurand.so.10 libcurand.so
stub nvrtc libnvrtc.so.13 libnvrtc.so
ln -sf "$CUDA_ROOT/lib/libcudart.so.13" "$LINK/libcudart.so"
export LIBRARY_PATH="$PWD/$LINK${LIBRARY_PATH:+:$LIBRARY_PATH}"

if [ $# -gt 0 ]; then
  time cargo build --locked --features cuda "$@"
  exit
fi
time cargo build --locked --features cuda --release --bin bertqa --example device_check
# A later CPU build (`cargo test`) replaces target/release/bertqa: keep the CUDA ones apart.
mkdir -p target/cuda-bin
cp target/release/bertqa target/release/examples/device_check target/cuda-bin/
echo "CUDA binaries in target/cuda-bin"
