#!/usr/bin/env bash
# run-on-gpu.sh — one prepared, quick check of the CUDA backend for a session
# that has a GPU (budget: a few minutes of device time). Prints nvidia-smi,
# makes sure the build deps are there, configures with -DSA_CUDA=ON for sm_90,
# builds only the CUDA test and bench targets, runs test_cuda_kernels,
# test_cuda_model, test_cuda_nccl and (with 2 GPUs) cluster_nccl.sh, and
# bench-cuda, and tees everything to ${OUT:-.}/cuda-log.txt.
#
# The device machines cannot reach a package registry. If the Debian -dev
# packages are missing there, carry them: here, in the repo root,
#   mkdir -p .debs && (cd .debs && apt-get download <each package of
#   scripts/setup's PKGS and their -dev dependencies>)
# and pass `.debs` in the run's carry list; this script unpacks .debs/*.deb
# into / when pkg-config cannot find the libraries.
# Usage: tests/cuda/run-on-gpu.sh [build-dir]   (default build-gpu)
set -euo pipefail

cd "$(dirname "$0")/../.."
BUILD=${1:-build-gpu}
OUTDIR=${OUT:-.}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/cuda-log.txt"
exec > >(tee "$LOG") 2>&1

step() { echo; echo "=== $* ($(date +%T))"; }

step "nvidia-smi"
timeout 30 nvidia-smi || echo "nvidia-smi failed (continuing)"
export PATH="/usr/local/cuda/bin:$PATH"
command -v nvcc && nvcc --version | tail -2

step "build dependencies"
need_pc="libzmq libprotobuf-c libuv libcjson libutf8proc libpcre2-8 openblas libavformat libavcodec libswresample libavutil yaml-0.1 cmocka"
deps_ok() { command -v pkg-config >/dev/null && pkg-config --exists $need_pc && command -v protoc-c >/dev/null; }
if ! deps_ok; then
  if compgen -G ".debs/*.deb" >/dev/null; then
    echo "unpacking carried .debs/*.deb"
    for f in .debs/*.deb; do dpkg -x "$f" /; done
    ldconfig || true
  else
    timeout 300 scripts/setup || echo "scripts/setup failed (no registry here?)"
  fi
fi
if ! deps_ok; then
  echo "FATAL: build deps missing: pkg-config --exists $need_pc / protoc-c"
  exit 2
fi

step "configure ($BUILD, sm_90)"
timeout 180 cmake -S . -B "$BUILD" -DSA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSA_WERROR=ON

step "build test_cuda_kernels test_cuda_model test_cuda_nccl bench-cuda"
timeout 420 cmake --build "$BUILD" -j16 --target test_cuda_kernels test_cuda_model test_cuda_nccl \
  bench-cuda

rc=0
step "test_cuda_kernels"
OPENBLAS_NUM_THREADS=1 SA_LOG_LEVEL=warn timeout 240 \
  "$BUILD/tests/cuda/test_cuda_kernels" || rc=$?
echo "test_cuda_kernels exit $rc"
step "test_cuda_model (tiny model greedy tokens: CUDA vs CPU)"
mrc=0
OPENBLAS_NUM_THREADS=1 SA_LOG_LEVEL=warn timeout 240 \
  "$BUILD/tests/cuda/test_cuda_model" || mrc=$?
echo "test_cuda_model exit $mrc"
[[ $rc -ne 0 ]] || rc=$mrc
step "test_cuda_nccl (two GPUs: NCCL hand-over between stages; 77 = skipped)"
nrc=0
OPENBLAS_NUM_THREADS=1 SA_LOG_LEVEL=warn timeout 120 \
  "$BUILD/tests/cuda/test_cuda_nccl" || nrc=$?
echo "test_cuda_nccl exit $nrc"
[[ $rc -ne 0 || $nrc -eq 77 ]] || rc=$nrc
if [[ $(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true) -ge 2 ]]; then
  step "cluster_nccl.sh (2 CUDA stages: NCCL link vs ZeroMQ, same tokens)"
  timeout 300 cmake --build "$BUILD" -j16 --target sa-coordinator sa-worker sa-encoder sa-client \
    sa-model
  crc=0
  BIN="$BUILD/bin" timeout 240 tests/cuda/cluster_nccl.sh "$BUILD/bin" || crc=$?
  echo "cluster_nccl.sh exit $crc"
  [[ $rc -ne 0 || $crc -eq 77 ]] || rc=$crc
fi

step "bench-cuda"
brc=0
SA_LOG_LEVEL=info timeout 240 "$BUILD/bench/cuda/bench-cuda" || brc=$?
echo "bench-cuda exit $brc"

step "done: test exit $rc, bench exit $brc; log at $LOG"
exit $(( rc != 0 ? rc : brc ))
