#!/bin/bash
# Round three on one GPU (issue 23), made for one device call of under 10 minutes:
#   1. airbench94_muon's own script on cifarlab's split of the data (benchmarks/airbench_anchor.py),
#      alone on the GPU: its per-run time and TTA accuracy;
#   2. `fast` alone on the same GPU (seed 0), and airbench94_muon's settings as cifarlab settings
#      (batch 2,000) alone: wall and training seconds;
#   3. benchmarks/jobs/round3-gpu.txt (the anchor and each lever x 3 seeds) side by side with
#      benchmarks/parallel_runs.py until DEADLINE seconds after the start; what finished is kept.
# Everything lands in OUT as a few files (a device call brings back at most 8): *.log, results.md,
# runs.tgz (each run's config, metrics and summary, results.json; no weights).
#
#     OUT=/tmp/g DATA=../shared/data/cifar10-train-jpeg.tgz AIRBENCH=airbench94_muon.py \
#         bash benchmarks/gpu_round3.sh
#
# SMOKE=1 runs every step tiny on the CPU (no airbench: it needs CUDA) to check the script itself.
set -u
cd "$(dirname "$0")/.."
START=$SECONDS
OUT=${OUT:?set OUT}; DATA=${DATA:?set DATA}; AIRBENCH=${AIRBENCH:-}
DEADLINE=${DEADLINE:-550}; JOBS=${JOBS:-13}; PY=${PY:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
WORK=$(mktemp -d); RUNS=$WORK/runs; mkdir -p "$RUNS" "$OUT"
JOBFILE=benchmarks/jobs/round3-gpu.txt; SMALL=()
if [ "${SMOKE:-}" = 1 ]; then
    SMALL=(--subset 512 --epochs 1 --val-fraction 0.02 --device cpu)
    grep -E '^(fast-s0|mm937-s0|fs10-s0):' $JOBFILE | sed 's/$/ --subset 512 --epochs 1 --val-fraction 0.02 --device cpu/' > "$WORK/jobs.txt"
    JOBFILE=$WORK/jobs.txt
fi
log() { echo "[$((SECONDS - START)) s] $*" | tee -a "$OUT/gpu_round3.log"; }
timed() {  # NAME LIMIT CMD...: run alone with a time limit, its output in OUT/NAME.log
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    log "$name: exit $? after $((SECONDS - t0)) s wall"
}
log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo no GPU); $($PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())'); $(nproc) cores"
timed data 240 $PY -m cifarlab data --data "$DATA" --quiet
if [ -n "$AIRBENCH" ] && [ "${SMOKE:-}" != 1 ]; then
    timed airbench 150 $PY benchmarks/airbench_anchor.py --script "$AIRBENCH" --data "$DATA" \
        --runs 5 --compile-mode default --work "$WORK/airbench"
fi
timed fast-alone 120 $PY -m cifarlab train --recipe fast --seed 0 --data "$DATA" --out "$RUNS/fast-alone" --quiet "${SMALL[@]}"
timed anchor-alone 60 $PY -m cifarlab train --recipe fast --seed 0 --batch-size 2000 --lr 1.656 \
    --set weight_decay=0.002415 --set muon_lr=0.24 --set muon_momentum=0.6 --set label_smoothing=0.2 \
    --set whiten_bias_lr_scale=64 --set whiten_bias_decay=true --data "$DATA" --out "$RUNS/anchor-alone" --quiet "${SMALL[@]}"
for run in fast-alone anchor-alone; do
    [ -f "$RUNS/$run/metrics.csv" ] && log "$run: training s $($PY -c "import csv,sys; print(round(sum(float(r['train_seconds']) for r in csv.DictReader(open(sys.argv[1]))), 1))" "$RUNS/$run/metrics.csv"), summary $(cat "$RUNS/$run/summary.json" 2>/dev/null | tr -d '\n ' | cut -c1-400)"
done
LEFT=$((DEADLINE - (SECONDS - START)))
if [ $LEFT -gt 60 ]; then
    log "parallel: $JOBS at a time for $LEFT s"
    $PY benchmarks/parallel_runs.py "$JOBFILE" --data "$DATA" --out "$RUNS/par" --jobs "$JOBS" \
        --timeout "$LEFT" --threads 1 > "$OUT/parallel.log" 2>&1
    log "parallel: exit $?"
    cp "$RUNS/par/results.md" "$OUT/" 2>/dev/null
fi
(cd "$RUNS" && find . \( -name summary.json -o -name metrics.csv -o -name config.json -o -name '*.log' -o -name results.json \) -print0 \
    | tar -czf "$OUT/runs.tgz" --null -T -)
log "done"
