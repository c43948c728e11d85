#!/usr/bin/env bash
# Every GPU check and benchmark of cxrdask in one go, for a GPU node (H100/H200, 16 cores):
#   bash benchmarks/run_gpu.sh [RESULTS_FOLDER]
# The GPU tests, then bench_train (50 epochs on the GPU, the step replayed from a CUDA graph
# and launched eagerly), bench_extract (bare backbone, the cores' decode bound, first pass
# from PNGs with the resize on the CPU and on the GPU, the pixel store), a JPEG archive's
# first pass decoded by the cores and by the GPU (nvJPEG; torchcodec's wheel in .whl/) and
# bench_pixels (codecs and PNG decoders). EXTRACT_ARGS replaces bench_extract's arguments;
# SKIP_PIXELS=1 leaves bench_pixels out, SKIP_JPEG=1 the JPEG pass. Where cxrdask is not
# installed (pip install -e '.[gpu,bench,test]'), wheels in .whl/ are installed beside the
# node's torch.
set -uo pipefail
OUT_DIR=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if [ -d .whl ] && ! python3 -c "import distributed, zarr" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  lscpu | grep -E "Model name|^CPU\(s\)"; grep -o -m1 -E "avx512_bf16|amx_bf16" /proc/cpuinfo
  python3 -c "import torch, torchvision; print('torch', torch.__version__, torchvision.__version__)"
} > "$OUT_DIR/machine.txt" 2>&1
cat "$OUT_DIR/machine.txt"
SECONDS=0
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_train_step.py \
  tests/test_pixels.py tests/test_cloud_cluster.py 2>&1 | tail -15 | tee "$OUT_DIR/gpu_tests.log"
echo "gpu tests: ${SECONDS}s"
timeout 170 python3 -m benchmarks.bench_train --sizes "" --full-run --device cuda \
  --variants default,eager --out "$OUT_DIR/bench_train" 2>&1 | tail -8 | tee "$OUT_DIR/bench_train.log"
echo "bench_train: ${SECONDS}s"
nvidia-smi dmon -s u -d 1 > "$OUT_DIR/dmon.log" 2>&1 &
DMON=$!
# shellcheck disable=SC2086  # EXTRACT_ARGS is a list of arguments
timeout 260 python3 -m benchmarks.bench_extract --device cuda --out "$OUT_DIR/bench_extract" \
  ${EXTRACT_ARGS:---n 1500 --replicate 8 --parts k,c,r,p --precisions bf16 --batch 256 \
  --batch-sizes 256 --chunk-rows 512 --layouts 2x1,4x1 --pixel-layouts 1x4,2x2 --seconds 4} \
  2>&1 | grep -v "^synth" | tee "$OUT_DIR/bench_extract.log" | tail -40
kill $DMON 2>/dev/null
echo "bench_extract: ${SECONDS}s"
if [ -z "${SKIP_JPEG:-}" ]; then  # a JPEG archive's first pass: the cores decode, or the GPU
  timeout 150 python3 -m benchmarks.bench_extract --device cuda --layout chexpert --n 1500 \
    --size 1024 --parts c,r --precisions bf16 --batch 256 --batch-sizes 256 --chunk-rows 512 \
    --layouts 4x1 --seconds 4 --out "$OUT_DIR/bench_extract_jpeg" 2>&1 | grep -v "^synth" \
    | tee "$OUT_DIR/bench_extract_jpeg.log" | tail -12
  echo "bench_extract (JPEG): ${SECONDS}s"
fi
if [ -z "${SKIP_PIXELS:-}" ]; then
  timeout 50 python3 -m benchmarks.bench_pixels --images /tmp/cxrdask-bench-archive --n 600 \
    --out "$OUT_DIR/bench_pixels" 2>&1 | tail -12 | tee "$OUT_DIR/bench_pixels.log"
  echo "bench_pixels: ${SECONDS}s"
fi
