#!/usr/bin/env bash
# A training epoch's time at two commits, side by side: `fit` of each config in CONFIGS (default
# "bp gait_norm": the paper's MLP, float64, batch 256) for --trainer.limit_train_batches STEPS steps
# ("all": the whole epoch) without validation, the two commits alternating REPS times, as EpochTimer
# reports it ("last training epoch"). The loggers are off unless LOGGERS=1 (then the config's own,
# W&B offline). Run from the repository root with the data in ../shared/data:
#     bash benchmarks/epoch_time_between_commits.sh OLD_COMMIT [NEW_COMMIT=HEAD] [REPS=3] [STEPS=60]
#     CONFIGS=conv/gait_norm LOGGERS=1 bash benchmarks/epoch_time_between_commits.sh OLD_COMMIT HEAD 2 all
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=${2:-HEAD} reps=${3:-3} steps=${4:-60}
configs=${CONFIGS:-bp gait_norm}
limit=(--trainer.limit_train_batches "$steps")
[ "$steps" = all ] && limit=()
logger=(--trainer.logger false)
[ "${LOGGERS:-0}" = 1 ] && logger=()
data=$(cd ../shared/data && pwd)
PY=${PYTHON:-python}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/old" >/dev/null 2>&1; git worktree remove --force "$work/new" >/dev/null 2>&1; rm -rf "$work"' EXIT
git worktree add --detach "$work/old" "$old" >/dev/null 2>&1
git worktree add --detach "$work/new" "$new" >/dev/null 2>&1
export WANDB_MODE=offline
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $steps steps; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "$reps"); do
    for side in old new; do
        for cfg in $configs; do
            line=$(cd "$work/$side" && $PY -m lightning_gait.fit --config "$cfg" --trainer.max_epochs 1 \
                "${limit[@]}" --trainer.limit_val_batches 0 "${logger[@]}" \
                --test_after_fit false --trainer.enable_progress_bar false --data.data_dir "$data" \
                --data.download false --trainer.default_root_dir "$work/run" 2>&1 | grep "last training epoch" || true)
            rm -rf "$work/run"
            echo "$rep $side $(git -C "$work/$side" rev-parse --short HEAD) $cfg ${line:-no epoch time (the run failed)}"
        done
    done
done
