#!/usr/bin/env bash
# An experiment's grid on one lent GPU: every run of it at once, on the real CIFAR-10. The grid is
# GRID (a file of experiments/grids without .yaml; default fair_cnn_mlp, the fair CNN-against-MLP
# table; GRID=cnn_levers for the CNN's accuracy levers). Run from the repository root.
#
# CIFAR-10 (six 31 MB files) is larger than one device call carries (64 MiB, the checkout included),
# so it travels xz-compressed in three calls of two files each:
#   1. here, once:  bash scripts/gpu_grid.sh --prepare [DATA_DIR]   (default ../shared/data)
#      writes .gpu_data/{1,2,3}/ (git-excluded); also run `bash scripts/gpu_check.sh --prepare`.
#   2. on the device, back to back (a machine goes back after 30 s idle):
#        bash scripts/gpu_grid.sh --unpack 1              carry [".gpu_data/1"]
#        bash scripts/gpu_grid.sh --unpack 2              carry [".gpu_data/2"]
#        bash scripts/gpu_grid.sh --unpack 3 --run SECS   carry [".gpu_data/3", ".gpu_pydeps"]
#      --run trains every run of the grid at once for at most SECS seconds (then stops them with
#      SIGTERM) and packs each run's metrics.csv, config.yaml and log into $OUT/$GRID.tar.gz.
#   3. here: tar -xzf .../$GRID.tar.gz (it holds outputs/$GRID/...), then
#        python -m experiments.stacks sync $GRID   (fair_cnn_mlp: && python -m experiments.fair_table fair_cnn_mlp --write)
#      fair_table reads the table at the last epoch that every run reached (levers: the epoch validation chooses).
set -uo pipefail
cd "$(dirname "$0")/.."
GRID="${GRID:-fair_cnn_mlp}"
[ -f "experiments/grids/$GRID.yaml" ] || { echo "error: no grid experiments/grids/$GRID.yaml (GRID=$GRID)" >&2; exit 2; }
FILES=(data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch)
CIFAR=/tmp/cifar/cifar-10-batches-py

if [ "${1:-}" = "--prepare" ]; then
    SRC="${2:-../shared/data}/cifar-10-batches-py"
    [ -f "$SRC/batches.meta" ] || { echo "error: no CIFAR-10 at $SRC" >&2; exit 2; }
    grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo '/.gpu_data/' >> .git/info/exclude
    for k in 1 2 3; do
        mkdir -p ".gpu_data/$k"
        for f in "${FILES[@]:$(( (k - 1) * 2 )):2}"; do
            [ -s ".gpu_data/$k/$f.xz" ] || xz -1 -c "$SRC/$f" > ".gpu_data/$k/$f.xz" || exit 1
        done
    done
    cp "$SRC/batches.meta" .gpu_data/1/
    du -sh .gpu_data/*
    exit 0
fi

if [ "${1:-}" = "--unpack" ]; then
    k="$2"; shift 2
    mkdir -p "$CIFAR"
    for f in .gpu_data/"$k"/*.xz; do xz -d -T0 -c "$f" > "$CIFAR/$(basename "$f" .xz)" || exit 1; done
    [ -f .gpu_data/"$k"/batches.meta ] && cp .gpu_data/"$k"/batches.meta "$CIFAR/"
    ls -l "$CIFAR"
fi

if [ "${1:-}" = "--run" ]; then
    secs="$2"
    OUT=${OUT:-/tmp/gpu_$GRID}
    mkdir -p "$OUT"
    for f in "${FILES[@]}" batches.meta; do
        [ -f "$CIFAR/$f" ] || { echo "error: $CIFAR/$f is missing: run the --unpack calls first" >&2; exit 2; }
    done
    export PYTHONPATH="$PWD:$PWD/.gpu_pydeps${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline
    export OMP_NUM_THREADS=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
    start=$(date +%s)
    # STACKS_ARGS / FIT_ARGS (a dry run here: --seeds 0 --only NAME, --trainer.accelerator cpu ...)
    # shellcheck disable=SC2086
    python3 -m experiments.stacks run "$GRID" --jobs 36 --data-dir /tmp/cifar ${STACKS_ARGS:-} \
        --fit-args ${FIT_ARGS:---trainer.accelerator gpu --trainer.devices 1} > "$OUT/stacks.log" 2>&1 &
    pid=$!
    while kill -0 $pid 2>/dev/null && [ $(( $(date +%s) - start )) -lt "$secs" ]; do sleep 2; done
    if kill -0 $pid 2>/dev/null; then
        echo "stopping the runs after $secs s (SIGTERM: each saves last.ckpt)" | tee -a "$OUT/stacks.log"
        pkill -TERM -P "$pid"   # its fit processes only
        for _ in $(seq 20); do kill -0 $pid 2>/dev/null || break; sleep 1; done
    fi
    echo "wall $(( $(date +%s) - start )) s" | tee -a "$OUT/stacks.log"
    find "outputs/$GRID" \( -name metrics.csv -o -name config.yaml -o -name 'part*.log' \) -print0 \
        | tar --null -czf "$OUT/$GRID.tar.gz" -T -
    tail -5 "$OUT/stacks.log"
    for f in outputs/"$GRID"/*/part1/metrics.csv; do
        printf '%s %s\n' "$(grep -c '^' "$f")" "$f"
    done
fi
