#!/usr/bin/env bash
# The GPU checks, as one prepared run for a session that is lent a GPU machine (issue 7's
# H100 target, issue 5's mixed precision on CUDA). About 5 minutes on an H100; no install:
# the machine's own python3 has torch, numpy, pillow, tqdm, pyyaml, safetensors, onnx, pytest.
#
#   device run:  bash scripts/gpu_check.sh          (results land in $OUT, or /tmp/gpu-check)
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
py=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"

# 1. the CUDA tests (inference equality, AMP training fp16/bf16, bench on CUDA)
$py -m pytest tests/test_cuda.py tests/test_preprocess.py -p no:cacheprovider -o addopts="" -q 2>&1 | tee "$out/pytest.txt"

# 2. issue 7: fcn8s_vgg16 500x500 fp16 batch 16 (target < 2 ms/image on an H100), eager and compiled
bench() { $py -m fcnseg.cli.main bench --model fcn8s_vgg16 --size 500x500 --batch 16 --device cuda \
            --warmup 5 --repeats 30 -q "$@" 2>&1 | tee -a "$out/bench.txt"; }
bench --dtype fp16 --baseline --json "$out/vgg16-fp16.json"
bench --dtype bf16 --json "$out/vgg16-bf16.json"
bench --dtype fp16 --compile --json "$out/vgg16-fp16-compile.json"
$py -m fcnseg.cli.main bench --model camvid-fcn8s-lite0 --size 360x480 --batch 16 --device cuda --dtype fp16 \
    --baseline --warmup 5 --repeats 30 -q --json "$out/lite0-fp16.json" 2>&1 | tee -a "$out/bench.txt"
