#!/bin/bash
# Round three's time targets (issue 23), measured as BENCHMARKS.md states them. Run it ALONE on
# the machine (nothing else running: the figures are wall-clock times), from the repository root:
#
#     bash benchmarks/round3_timing.sh                  # ~80 minutes; prints a table at the end
#     STEPS="fast budget" bash benchmarks/round3_timing.sh   # only some of them
#
# Steps (each prints its own lines, and the table at the end sums them up):
#   fast     `cifarlab train --recipe fast`, seed 0: wall time (train + TTA evaluation) and val
#            with TTA. Target: >= 0.915 in <= 25 minutes.
#   budget   `cifarlab train --recipe fast_small --budget 10m`, seed 0: wall time, the epochs and
#            width the budget chose, val with TTA. Target: >= 0.90 within 10 minutes + startup.
#   final    the budget run's recipe and epochs again on all 50,000 images (--val-fraction 0):
#            the shipped model's cost.
#   quick    `cifarlab train --recipe quick`, three times: seconds of training (the step loop,
#            train_seconds in metrics.csv) and val. Target: >= 0.715 in <= 20 s of training.
#   profile  benchmarks/profile_step.py --recipe fast: where a step's time goes.
#   keras    benchmarks/keras_base.py: `base` against Keras in alternating epochs (needs a
#            TensorFlow environment: TF_PYTHON, default /tmp/tfvenv/bin/python; make one with
#            python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu).
#            Target: >= 1.1x, median of the pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-train-jpeg.tgz}
OUT=${OUT:-/tmp/round3-timing-$(date +%Y%m%d-%H%M%S)}
STEPS=${STEPS:-"fast budget final quick profile keras"}
TF_PYTHON=${TF_PYTHON:-/tmp/tfvenv/bin/python}
[ -x "$TF_PYTHON" ] || [ ! -x /work/exp/speed/tfvenv/bin/python ] || TF_PYTHON=/work/exp/speed/tfvenv/bin/python
PY=.venv/bin/python
CL=".venv/bin/cifarlab"
mkdir -p "$OUT"
echo "round three timing: $(date), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); out $OUT"

has() { [[ " $STEPS " == *" $1 "* ]]; }
wall() {  # wall time of a command, in seconds, into $OUT/NAME.wall
    local name=$1; shift
    local start; start=$(date +%s%N)
    "$@" > "$OUT/$name.log" 2>&1
    echo "$(( ($(date +%s%N) - start) / 1000000 ))" | sed -E 's/([0-9]{3})$/.\1/' > "$OUT/$name.wall"
    echo "$name: $(cat "$OUT/$name.wall") s wall"
}

if has fast; then
    wall fast $CL train --recipe fast --data "$DATA" --out "$OUT/fast"
fi
if has budget; then
    wall budget $CL train --recipe fast_small --budget 10m --data "$DATA" --out "$OUT/budget"
fi
if has final; then
    if [ -f "$OUT/budget/config.json" ]; then  # the budget run's settings, its epochs, no val
        wall final $CL train --config "$OUT/budget/config.json" --set budget=none \
            --val-fraction 0 --data "$DATA" --out "$OUT/final"
    else
        echo "final: skipped (needs the budget step's run)"
    fi
fi
if has quick; then
    for i in 1 2 3; do
        wall "quick-$i" $CL train --recipe quick --data "$DATA" --out "$OUT/quick-$i"
    done
fi
if has profile; then
    $PY benchmarks/profile_step.py --recipe fast | tee "$OUT/profile.txt"
fi
if has keras; then
    if [ -x "$TF_PYTHON" ]; then
        $PY benchmarks/keras_base.py --tf-python "$TF_PYTHON" --data "$DATA" | tee "$OUT/keras.txt"
    else
        echo "keras: skipped ($TF_PYTHON not found; see the top of this script)"
    fi
fi

$PY - "$OUT" <<'EOF'
"""The table: one line per step, from the runs' own files."""
import csv, json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])

def run(name):
    folder = out / name
    if not (folder / "summary.json").is_file():
        return None
    summary = json.loads((folder / "summary.json").read_text())
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    wall = float((out / f"{name}.wall").read_text())
    train = sum(float(r["train_seconds"]) for r in rows)
    return summary, rows, wall, train

print("\n| step | measured | target |\n|---|---|---|")
if r := run("fast"):
    s, rows, wall, train = r
    print(f"| fast | {s.get('val_acc_tta', float('nan')):.4f} with TTA ({s['val_acc']:.4f} without) in "
          f"{wall / 60:.1f} min wall, {train / 60:.1f} min of it training | >= 0.915 in <= 25 min |")
if r := run("budget"):
    s, rows, wall, train = r
    config = json.loads((out / "budget" / "config.json").read_text())["config"]
    widths = "/".join(map(str, config["model_kwargs"].get("widths", []))) or config["model"]
    share = config.get("last_epoch_share", 1.0)
    print(f"| budget 10m | {s.get('val_acc_tta', float('nan')):.4f} with TTA, {len(rows)} epochs"
          + (f" (the last {share:.0%})" if share < 1 else "") + f" of widths {widths}, {wall:.0f} s "
          f"wall ({wall / 600:.1%} of the budget) | >= 0.90 in 600 s + startup |")
if r := run("final"):
    s, rows, wall, train = r
    print(f"| final fit, 50,000 images | {len(rows)} epochs in {wall:.0f} s wall | - |")
quick = [r for r in (run(f"quick-{i}") for i in (1, 2, 3)) if r]
if quick:
    trains = [r[3] for r in quick]
    print(f"| quick | val {quick[0][0]['val_acc']:.4f}, {statistics.median(trains):.1f} s of training "
          f"(median of {len(trains)}: {', '.join(f'{t:.1f}' for t in trains)}) | >= 0.715 in <= 20 s |")
EOF
