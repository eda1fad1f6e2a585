#!/usr/bin/env bash
# What needs a CUDA GPU, prepared to run in one go on a machine that has one (it never runs in CI):
#
#   bash benchmarks/device_check.sh checks                 # the CUDA tests, then extraction/apply speed on the GPU
#   bash benchmarks/device_check.sh train [STEPS [UNTIL]]  # the augmentation experiment's arms, side by side
#
# `train` trains each arm of examples/augmentation_experiment in its own process on the GPU (the data are made
# there too), STEPS steps on its cosine schedule (default 20000), stopping at UNTIL for now (default STEPS);
# the same command again goes on from the checkpoints. Score the arms afterwards on any machine with
# `python examples/augmentation_experiment/run.py --arms ... --work WORK --steps STEPS --device cpu`.
#
# Environment: OUT (default benchmarks/results/device) receives logs, results and, under OUT/aug, the arms'
# checkpoints; ARMS (default a,b,c,e); PHOTOS (default ../shared/data/train). The tests and benchmarks read
# ../shared; a ./shared inside the repo is linked there when ../shared is absent.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/device}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -e ../shared ] || [ ! -d shared ] || ln -s "$PWD/shared" ../shared
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'device_check.sh: no CUDA GPU here')" || exit 2

case "${1:-}" in
checks)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
    python -m pytest -q -rs -k cuda tests 2>&1 | tee "$out/cuda_tests.txt"
    python benchmarks/bench_transfer.py --parts speed --device cuda 2>&1 | tee "$out/transfer_speed_cuda.txt"
    cp benchmarks/results/transfer_speed_cuda.json "$out/"
    ;;
train)
    steps=${2:-20000}
    until=${3:-$steps}
    threads=$(( $(nproc) / 5 > 0 ? $(nproc) / 5 : 1 ))
    pids=()
    for arm in $(echo "${ARMS:-a,b,c,e}" | tr , ' '); do
        OMP_NUM_THREADS=$threads python examples/augmentation_experiment/run.py --arms "$arm" --device cuda \
            --steps "$steps" --until "$until" --work "$out/aug" --photos "${PHOTOS:-../shared/data/train}" \
            --no-eval > "$out/train_$arm.log" 2>&1 &
        pids+=($!)
    done
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    # one log (a few files come back from a lent machine): each arm's lines under its name
    for log in "$out"/train_*.log; do sed "s/^/$(basename "$log" .log): /" "$log"; done > "$out/train.log"
    rm -f "$out"/train_*.log
    grep -E "step [0-9]+:" "$out/train.log" | tail -n 8
    exit $status
    ;;
*)
    echo "usage: bash benchmarks/device_check.sh checks | train [STEPS [UNTIL]]" >&2
    exit 2
    ;;
esac
