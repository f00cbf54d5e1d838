#!/bin/bash
# Round three on one GPU (issue 23), made for one device call of under 10 minutes:
#   1. airbench94_muon's own script on cifarlab's split of the data (benchmarks/airbench_anchor.py),
#      alone on the GPU: its per-run time and TTA accuracy;
#   2. the runs of ALONE_JOBS one after another, alone on the GPU: `fast` (seed 0) and
#      airbench94_muon's settings as cifarlab settings (batch 2,000): wall and training seconds;
#   3. benchmarks/jobs/round3-gpu.txt (the anchor and each lever x 3 seeds) side by side with
#      benchmarks/parallel_runs.py until DEADLINE seconds after the start; what finished is kept.
# Everything lands in OUT as a few files (a device call brings back at most 8): gpu_round3.log
# (the figures), data.log, airbench.log, parallel.log, results.md,
# runs.tgz (each run's config, metrics and summary, results.json; no weights).
#
#     OUT=/tmp/g DATA=../shared/data/cifar10-train-jpeg.tgz AIRBENCH=airbench94_muon.py \
#         bash benchmarks/gpu_round3.sh
#
# JOBFILE=FILE runs other jobs in step 3, ALONE_JOBS=FILE other runs in step 2; ALONE=0 skips 1 and 2.
# SMOKE=1 runs every step tiny on the CPU (no airbench: it needs CUDA) to check the script itself.
set -u
cd "$(dirname "$0")/.."
START=$SECONDS
OUT=${OUT:?set OUT}; DATA=${DATA:?set DATA}; AIRBENCH=${AIRBENCH:-}
DEADLINE=${DEADLINE:-550}; JOBS=${JOBS:-13}; PY=${PY:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
WORK=$(mktemp -d); RUNS=$WORK/runs; mkdir -p "$RUNS" "$OUT"
JOBFILE=${JOBFILE:-benchmarks/jobs/round3-gpu.txt}; ALONE=${ALONE:-1}; SMALL=()
ALONE_JOBS=${ALONE_JOBS:-benchmarks/jobs/round3-gpu-alone.txt}
if [ "${SMOKE:-}" = 1 ]; then
    SMALL=(--subset 512 --epochs 1 --val-fraction 0.02 --device cpu)
    grep -E '^[a-z0-9]+-s0:' $JOBFILE | head -3 | sed 's/$/ --subset 512 --epochs 1 --val-fraction 0.02 --device cpu/' > "$WORK/jobs.txt"
    JOBFILE=$WORK/jobs.txt
fi
log() { echo "[$((SECONDS - START)) s] $*" | tee -a "$OUT/gpu_round3.log"; }
timed() {  # NAME LIMIT CMD...: run alone with a time limit, its output in RUNS/NAME.log
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" < /dev/null > "$RUNS/$name.log" 2>&1
    log "$name: exit $? after $((SECONDS - t0)) s wall"
}
log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo no GPU); $($PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())'); $(nproc) cores"
timed data 240 $PY -m cifarlab data --data "$DATA" --quiet; cp "$RUNS/data.log" "$OUT/"
if [ -n "$AIRBENCH" ] && [ "${SMOKE:-}" != 1 ] && [ "$ALONE" = 1 ]; then
    timed airbench 150 $PY benchmarks/airbench_anchor.py --script "$AIRBENCH" --data "$DATA" \
        --runs 5 --compile-mode default --work "$WORK/airbench"; cp "$RUNS/airbench.log" "$OUT/"
fi
# Step 2: each line of ALONE_JOBS ("NAME LIMIT: [src=DIR] cifarlab train options"; src= runs
# another copy of the code, e.g. an older commit's src/, for a before/after on the same GPU).
if [ "$ALONE" = 1 ]; then
    while read -r head rest; do
        name=${head%% *}; limit=${rest%%:*}; args=${rest#*:}
        code=$PWD/src
        if [[ $args == " src="* ]]; then args=${args# src=}; code=$PWD/${args%% *}; args=${args#* }; fi
        # shellcheck disable=SC2086
        PYTHONPATH=$code timed "$name" "$limit" $PY -m cifarlab train --data "$DATA" --out "$RUNS/$name" \
            --quiet $args "${SMALL[@]}"
        [ -f "$RUNS/$name/metrics.csv" ] && log "$name: training s $($PY -c "import csv,sys; print(round(sum(float(r['train_seconds']) for r in csv.DictReader(open(sys.argv[1]))), 2))" "$RUNS/$name/metrics.csv"), summary $(tr -d '\n ' < "$RUNS/$name/summary.json" 2>/dev/null | cut -c1-300)"
    done < <(grep -v '^#' "$ALONE_JOBS" | grep .)
fi
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
