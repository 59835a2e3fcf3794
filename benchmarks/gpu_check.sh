#!/usr/bin/env bash
# The GPU checks in one call, for a machine with an NVIDIA GPU and no network (the device tool's: it
# has numba-cuda, CuPy, PyTorch, compute-sanitizer; /work/.library/device/METHOD.md):
#
#     bash benchmarks/gpu_check.sh        (logs and results under $OUT, else ./gpu-out)
#
# Steps, most needed first, each with a time limit, all within BUDGET seconds (default 540, which
# leaves room in a 15-minute device lease for the machine's start and one more short call); a step
# that no longer fits is skipped and says so:
#   install  the checkout, no dependency fetched
#   check    `gpubptt check --backend cuda`: every cell against the reference, as a user verifies
#   tests    the GPU tier (pytest -m gpu): every kernel variant of every cell against the reference,
#            the cooperative variant on a multi-block grid, the CuPy paths of the backend
#   bench    `gpubptt bench`, tanh, at the issue's GPU floor shapes, cuda against torch-cuda (cuDNN),
#            then GRU and LSTM there
#   memcheck, racecheck, synccheck   compute-sanitizer over the variant tests of the tanh cell
# The last lines printed are a summary: each step's exit status and time (0 passed, 124 timed out).
set -u
OUT=${OUT:-$PWD/gpu-out}
BUDGET=${BUDGET:-540}
SHAPES=64x100x512x512,4x1000x64x256,1x1000x8x64
mkdir -p "$OUT"
summary=()

step() {  # step NAME LIMIT COMMAND...: run COMMAND with its output in $OUT/NAME.txt
    local name=$1 limit=$2 left=$((BUDGET - SECONDS))
    shift 2
    if ((left < 20)); then
        summary+=("$name: skipped, ${left}s of the budget left")
        return
    fi
    ((limit > left)) && limit=$left
    local t0=$SECONDS rc
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    rc=$?
    summary+=("$name: exit $rc in $((SECONDS - t0))s (limit ${limit}s)")
    tail -n 3 "$OUT/$name.txt"
}

{ date -u; nvidia-smi; git rev-parse HEAD; python3 --version; } >"$OUT/machine.txt" 2>&1
step install 90 python3 -m pip install --no-deps --no-build-isolation -e .
step check 60 python3 -m gpubptt check --backend cuda
step tests 150 python3 -m pytest -q -m gpu tests
step bench-tanh 120 python3 -m gpubptt bench --cell tanh --dtype float32 --backend cuda,torch-cuda --mode both \
    --shapes "$SHAPES" --json "$OUT/gpu-tanh.json" --markdown "$OUT/gpu-tanh.md"
step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 3 \
    python3 -m pytest -q -m gpu tests/test_cuda_variants.py -k "tanh and float32"
step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 3 \
    python3 -m pytest -q -m gpu tests/test_cuda_variants.py -k "tanh and float32"
for cell in gru lstm; do
    step "bench-$cell" 60 python3 -m gpubptt bench --cell "$cell" --dtype float32 --backend cuda,torch-cuda \
        --mode bptt --shapes "$SHAPES" --json "$OUT/gpu-$cell.json" --markdown "$OUT/gpu-$cell.md"
done
step synccheck 60 compute-sanitizer --tool synccheck --error-exitcode 3 \
    python3 -m pytest -q -m gpu tests/test_cuda_variants.py -k "tanh and float32"

cat "$OUT"/gpu-*.md 2>/dev/null
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
