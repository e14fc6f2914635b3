#!/usr/bin/env bash
# Prepared GPU check for issue 5 (data-parallel training): one short script for a session
# that is lent a GPU machine. Run from the repository root.
#
#   1. here (no GPU needed), once per checkout:
#        bash scripts/gpu_check.sh --prepare
#      copies the pure-Python packages that the GPU image lacks for the CLI (jsonargparse,
#      docstring_parser, typeshed_client) from .venv into .gpu_pydeps/ (git-excluded). Steps b
#      and c both need them: b builds its rules through fit's parser (experiments.common).
#   2. on the device (the device tool's run): command "bash scripts/gpu_check.sh",
#      carry [".gpu_pydeps"], timeout_s 480. About 3-5 minutes on an H100.
#
# What it does there (results under $OUT, default /tmp/gpu_check):
#   a. nvidia-smi: the card's name, memory and driver               -> gpu.txt
#   b. scripts/gpu_throughput.py: 200-step fits (20 warm-up) of bp and gait_norm (paper
#      form) in float64 and float32, gait_norm's exact form in float32, and bp / gait_norm
#      float64 under strategy=ddp with devices=1; images/s, ms/step, peak memory
#                                                                    -> throughput.{md,json,log}
#   c. the CLI's DDP path on the GPU: python -m lightning_gait.fit --config conf/gait_norm.yaml
#      --trainer.accelerator gpu --trainer.devices 1 --trainer.strategy ddp, 30 steps on a
#      generated CIFAR-10, diagnostics callbacks as configured, test after fit -> cli_ddp.log
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    SITE=$(.venv/bin/python -c "import jsonargparse, os; print(os.path.dirname(os.path.dirname(jsonargparse.__file__)))")
    rm -rf .gpu_pydeps && mkdir -p .gpu_pydeps
    for pkg in jsonargparse docstring_parser typeshed_client; do cp -r "$SITE/$pkg" .gpu_pydeps/; done
    # the dist-info folders too: Lightning checks jsonargparse[signatures] by its installed metadata
    cp -r "$SITE"/jsonargparse-*.dist-info "$SITE"/docstring_parser-*.dist-info "$SITE"/typeshed_client-*.dist-info .gpu_pydeps/
    grep -qx '/.gpu_pydeps/' .git/info/exclude 2>/dev/null || echo '/.gpu_pydeps/' >> .git/info/exclude
    du -sh .gpu_pydeps
    exit 0
fi

PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.gpu_pydeps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
status=0

echo "== a. device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== b. throughput"
timeout 360 $PY scripts/gpu_throughput.py --steps 200 --warmup 20 \
    --json "$OUT/throughput.json" --markdown "$OUT/throughput.md" 2>&1 | tee "$OUT/throughput.log" \
    | grep -v -e "Warning" -e "warn(" -e "litlogger" -e "TPU available" || true
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== c. CLI, strategy ddp, devices 1"
if $PY -c "import jsonargparse" 2>/dev/null; then
    DATA=$(mktemp -d)
    $PY -c "
import importlib.util, sys
spec = importlib.util.spec_from_file_location('c', 'tests/conftest.py'); m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m); m.write_tiny_cifar(__import__('pathlib').Path(sys.argv[1]), per_batch=2048, test_size=1024)
" "$DATA"
    start=$(date +%s)
    timeout 240 $PY -m lightning_gait.fit --config conf/gait_norm.yaml \
        --trainer.accelerator gpu --trainer.devices 1 --trainer.strategy ddp \
        --trainer.max_steps 30 --trainer.logger false --trainer.enable_progress_bar false \
        --trainer.default_root_dir "$DATA/out" \
        --data.data_dir "$DATA" --data.verify_checksums false --data.download false --data.val_size 1024 \
        > "$OUT/cli_ddp.log" 2>&1
    rc=$?
    echo "exit $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/cli_ddp.log"
    grep -A12 "lightning-gait summary" "$OUT/cli_ddp.log" || tail -30 "$OUT/cli_ddp.log"
    [ $rc = 0 ] || status=1
else
    echo "skipped: jsonargparse is not importable (run 'bash scripts/gpu_check.sh --prepare' here and carry .gpu_pydeps)" \
        | tee "$OUT/cli_ddp.log"
    status=1
fi

echo "== summary"
cat "$OUT/gpu.txt"; cat "$OUT/throughput.md" 2>/dev/null
exit $status
