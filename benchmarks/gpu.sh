#!/usr/bin/env bash
# Every benchmark once on a CUDA GPU, in one call: configs A, B, C in fp32, then bf16 autocast with and
# without torch.compile of the latent blocks, the scaling sweep and the Trainer overhead. Results are JSON
# files in $OUT (default benchmarks/results/gpu); the log in $OUT/log.txt. Every step has its own time
# limit, so one slow step cannot cost the others.
#
#     bash benchmarks/gpu.sh
#
# The reference libraries must be importable (benchmarks/requirements.txt); a folder of extra packages
# can be put first on the path with EXTRA_SITE=dir. DEVICE=cpu A=tinyA B=tinyA C=tinyC SIZES=1024,2048
# runs the same script end to end in seconds, without a GPU.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
DEVICE=${DEVICE:-cuda}
A=${A:-A} B=${B:-B} C=${C:-C}
SIZES=${SIZES:-1024,2048,4096,8192,16384,32768,65536,131072,262144}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="${EXTRA_SITE:+$EXTRA_SITE:}${PYTHONPATH:-}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
PY=$(command -v python3 || command -v python)
step() {  # step SECONDS ARGS...: one benchmark command under its own time limit
    local limit=$1; shift
    echo "== $(date +%T) $*"
    timeout "$limit" "$PY" -m "$@" || echo "!! exit $? after at most ${limit}s: $*"
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
# The Trainer benchmark finds the built-in tasks through entry points: register them if not installed yet.
"$PY" -c "import perceiver_mt.registry as r; r.load_task('digits')" 2>/dev/null \
    || "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 \
    || echo "!! could not install this project; the Trainer benchmark will fail"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
C_IMPLS=ours,ours+chunk,ours+ckpt,ours+matmul,hf
step 120 benchmarks.perceivers compare --config "$A" --device "$DEVICE" --rounds 3 --steps 20 --warmup 5 --output "$OUT/A.json"
step 120 benchmarks.perceivers compare --config "$B" --device "$DEVICE" --rounds 3 --steps 10 --warmup 3 --output "$OUT/B.json"
step 120 benchmarks.perceivers compare --config "$C" --device "$DEVICE" --impls $C_IMPLS --rounds 2 --steps 3 --warmup 2 --output "$OUT/C.json"
step 90 benchmarks.perceivers sweep --device "$DEVICE" --sizes "$SIZES" --steps 5 --warmup 2 --output "$OUT/sweep.json"
step 90 benchmarks.trainer_overhead --device "$DEVICE" --rounds 3 --steps 30 --profile --output "$OUT/trainer_overhead.json"
step 90 benchmarks.perceivers compare --config "$A" --device "$DEVICE" --autocast bfloat16 --impls ours,hf,krasserm,lucidrains \
    --rounds 2 --steps 20 --warmup 5 --output "$OUT/A_bf16.json"
step 150 benchmarks.perceivers compare --config "$C" --device "$DEVICE" --autocast bfloat16 --impls ours,ours+compile,hf \
    --rounds 1 --steps 3 --warmup 2 --output "$OUT/C_bf16.json"
echo "== $(date +%T) done"
