#!/usr/bin/env bash
# Issue 16's CPU targets as one run on whatever CPU this is (docs/performance.md records each
# CPU's figures): the machine line, Lite0 and the default Lite2 end to end against the eager
# baseline, VGG16 FCN-8s through `fcnseg bench` (precision auto), what `load_model` picks for the
# shipped models, and the per-megapixel cost of big images. About 10 minutes on 2 cores.
# Run it on a quiet machine (stop background training first: ratios are measured in one
# process with interleaved repeats, but absolute times are not comparable under load).
#
#   bash scripts/cpu_check.sh            (results land in $OUT, or /tmp/cpu-check)
#   THREADS=1 bash scripts/cpu_check.sh  (one core)
#   SKIP_BIG=1 bash scripts/cpu_check.sh (without the 100 MP image: ~1 minute and 10 GB less)
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/cpu-check}
threads=${THREADS:-2}
py=${PYTHON:-python3}
export OMP_NUM_THREADS=$threads
mkdir -p "$out"
{
  lscpu | grep -E 'Model name|^CPU\(s\)|L3'
  echo "flags: $(grep -m1 -o -E 'avx2|avx512f|avx512_vnni|avx_vnni|avx512_bf16|amx_bf16|amx_int8' /proc/cpuinfo \
      | sort -u | tr '\n' ' ')"
  $py -c "import torch; print('torch', torch.__version__, torch.backends.cpu.get_cpu_capability())"
  echo "load: $(cut -d' ' -f1-3 /proc/loadavg); threads: $threads; $(date -u +%FT%TZ)"
} 2>&1 | tee "$out/machine.txt"

# 1. Lite0 and the default Lite2, 360x480, end to end (uint8 image -> labels), fp32 paths and bf16
for m in camvid-fcn8s-lite0 camvid-fcn8s-lite2; do
  FCNSEG_PRECISION=fp32 $py scripts/bench_compare.py --model $m --size 360x480 --threads "$threads" \
      --configs eager_nchw,unfused,optimized,jit,bf16 --end-to-end --repeats 30 --json "$out/$m-compare.json" \
      2>&1 | grep -v '^prepared' | tee "$out/$m-compare.txt"
done

# 2. the default path as users get it: `fcnseg bench` with precision auto (it names the path and why)
$py -m fcnseg.cli.main bench --model camvid-fcn8s-lite2 --size 360x480 --end-to-end --baseline \
    --threads "$threads" --repeats 20 --json "$out/lite2-bench.json" 2>&1 | tee "$out/bench.txt"
$py -m fcnseg.cli.main bench --model fcn8s_vgg16 --size 500x500 --end-to-end --baseline \
    --threads "$threads" --repeats 6 --warmup 1 --json "$out/vgg16-bench.json" 2>&1 | tee -a "$out/bench.txt"

# 3. what precision="auto" picks for the shipped models on this CPU (measured on the shipped samples)
for m in camvid-fcn8s-lite0 camvid-fcn8s-lite2; do
  $py -c "import fcnseg; fcnseg.load_model('$m')" 2>&1 | tee -a "$out/auto.txt"
done

# 4. big images: seconds per megapixel, each size twice (the first image of a size pays its page
#    faults; the summary line compares repeated with repeated), big ones between 1 MP runs
sizes="1024 1024 1024 4000 4000 1024"
[[ -z "${SKIP_BIG:-}" ]] && sizes="$sizes 10000 10000 1024"
FCNSEG_FREEZE=0 $py scripts/big_image_cost.py $sizes 2>&1 | tee "$out/big.txt"
