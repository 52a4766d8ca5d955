#!/usr/bin/env bash
# The GPU checks, as one prepared run for a session that is lent a GPU machine (issue 7's
# H100 target, issue 5's mixed precision on CUDA, issue 16's side-by-side numbers). About
# 5 minutes on an H100/H200 (each step is bounded by `timeout`: 480 s in all at most);
# no install: the machine's own python3 has torch, numpy, pillow, tqdm, pyyaml, safetensors,
# onnx, pytest.
#
#   device run:  bash scripts/gpu_check.sh          (results land in $OUT, or /tmp/gpu-check)
#   anywhere:    bash scripts/gpu_check.sh --dry-run (CPU, tiny sizes: checks the Python parts run)
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
py=${PYTHON:-python3}
if [[ "${1:-}" == "--dry-run" ]]; then
    $py scripts/gpu_compare.py --dry-run --json "$out/compare-dry.json" 2>&1 | tee "$out/compare.txt" || exit 1
    $py -m fcnseg.cli.main bench --model fcn8s_lite0 --num-classes 3 --size 32x48 --device cpu --precision bf16 \
        --baseline --warmup 1 --repeats 1 --gemm-size 128 -q 2>&1 | tee "$out/bench.txt" || exit 1
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"

# 1. the CUDA tests (inference equality without TF32, auto precision, AMP training fp16/bf16, bench on CUDA)
timeout 150 $py -m pytest tests/test_cuda.py tests/test_preprocess.py -p no:cacheprovider -o addopts="" -q 2>&1 \
    | tee "$out/pytest.txt"

# 2. issue 16: plain module vs fast path vs torchfcn-style eager fp16 channels-last, batch 16, 500x500
timeout 100 $py scripts/gpu_compare.py --json "$out/compare.json" 2>&1 | tee "$out/compare.txt"

# 3. issue 7: fcn8s_vgg16 500x500 fp16 batch 16 (target < 2 ms/image on an H100), eager and compiled;
#    the report names the path and its share of the same-dtype (fp16 / bf16) GEMM rate
bench() { timeout "$t" $py -m fcnseg.cli.main bench --model fcn8s_vgg16 --size 500x500 --batch 16 --device cuda \
            --warmup 5 --repeats 30 -q "$@" 2>&1 | tee -a "$out/bench.txt"; }
t=40 bench --precision fp16 --baseline --json "$out/vgg16-fp16.json"
t=40 bench --precision bf16 --json "$out/vgg16-bf16.json"
t=60 bench --precision fp16 --compile --json "$out/vgg16-fp16-compile.json"
timeout 30 $py -m fcnseg.cli.main bench --model camvid-fcn8s-lite0 --size 360x480 --batch 16 --device cuda \
    --precision fp16 --baseline --warmup 5 --repeats 30 -q --json "$out/lite0-fp16.json" 2>&1 | tee -a "$out/bench.txt"

# 4. issue 16 item 4: folder throughput on the GPU (decode in reader threads, same-size batches,
#    pinned-memory async copies); predict's summary line reports images/s
imgs=/tmp/gpu-check-images; rm -rf "$imgs"; mkdir -p "$imgs"
for i in $(seq 1 32); do for f in src/fcnseg/samples/camvid/images/*; do
  cp "$f" "$imgs/$i-$(basename "$f")"; done; done
for bs in 1 16; do
  timeout 30 $py -m fcnseg.cli.main predict "$imgs" --model camvid-fcn8s-lite0 --device cuda --batch-size $bs \
      --out /tmp/gpu-check-out-$bs 2>&1 | tail -1 | tee -a "$out/predict.txt"
done
