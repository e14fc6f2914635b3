"""Short training runs on one GPU: images/s of Backprop and GAIT-N in float64 and float32, and DDP.

Run from the repository root (``scripts/gpu_check.sh`` calls it)::

    python scripts/gpu_throughput.py --steps 200 --warmup 20 --json OUT/throughput.json

Each run is a real ``Trainer.fit`` of the rule that ``conf/NAME.yaml`` describes, built by
fit's own parser (:func:`experiments.common.regime_cli`; the paper's network, 3072 -> 6 x
500, batch 256 per process), fed by
:class:`~lightning_gait.data.CIFAR10DataModule` from a generated CIFAR-10 in the real file
format (random pixels: the speed does not depend on them; the real data set is not on
the GPU machine), uint8 batches converted on the device. Timed: the steps after
``--warmup`` (CUDA synchronised at both ends), so start-up, cuBLAS/cuSOLVER
initialisation and the first LU factorisations are left out. Validation is off.

Rows: ``bp`` and ``gait_norm`` (the paper's form of GAIT-N) at ``precision`` 64-true and
32-true, ``gait_norm`` in the exact ``difference`` form at 32-true (the paper's form
loses its targets to round-off in float32 and may skip batches: ``skipped`` says how
many), then ``bp`` and ``gait_norm`` at 64-true again under ``strategy=ddp`` with
``devices=1`` (the DDP code path: process group, DDP wrapper, gradient all-reduce hook).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import pytorch_lightning as pl  # noqa: E402

from experiments.common import model_args, net_args, regime_cli  # noqa: E402
from lightning_gait.data import CIFAR10DataModule  # noqa: E402


def rule_from_config(name: str, *, width: Optional[int] = None, **overrides):
    """The rule of regime ``name`` (``overrides``: its arguments to replace) and the config's batch size."""
    cli = regime_cli(name, *model_args(**overrides), *net_args(width=width))
    return cli.model, cli.datamodule.batch_size


def write_fake_cifar(root: Path, per_file: int) -> Path:
    spec = importlib.util.spec_from_file_location("lg_conftest", REPO_ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tiny_cifar(root, per_batch=per_file, test_size=256)


class StepTimer(pl.Callback):
    """Wall time of the training steps after ``warmup`` (CUDA synchronised at both ends)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: Optional[float] = None
        self.end: Optional[float] = None
        self.images = 0
        self.wrapper: Optional[str] = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.wrapper = type(trainer.strategy.model).__name__  # DistributedDataParallel under ddp

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self._sync(pl_module)
            self.start = time.perf_counter()
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None:
            self.images += len(batch[1]) * trainer.world_size
            self._sync(pl_module)
            self.end = time.perf_counter()


def run(label: str, config: str, precision: str, *, data_dir: Path, steps: int, warmup: int,
        accelerator: str, strategy: str, width: Optional[int], overrides: Dict) -> Dict:
    rule, batch_size = rule_from_config(config, width=width, **overrides)
    data = CIFAR10DataModule(data_dir=str(data_dir), download=False, verify_checksums=False, val_size=0,
                             batch_size=batch_size, pin_memory=accelerator == "gpu")
    timer = StepTimer(warmup)
    if strategy == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        strategy_obj = DDPStrategy(process_group_backend="nccl" if accelerator == "gpu" else "gloo")
    else:
        strategy_obj = "auto"
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, strategy=strategy_obj, precision=precision,
        max_steps=steps, max_epochs=-1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer],
    )
    wall = time.perf_counter()
    error = None
    try:
        trainer.fit(rule, datamodule=data)
    except Exception as err:  # report, keep measuring the other rows
        error = f"{type(err).__name__}: {err}"
    wall = time.perf_counter() - wall
    timed_steps = max(trainer.global_step - warmup, 0)
    seconds = (timer.end - timer.start) if timer.start is not None and timer.end is not None else float("nan")
    row = {
        "run": label, "config": config, "precision": precision, "strategy": strategy,
        "wrapper": timer.wrapper, "width": rule.net.width,
        "batch_per_process": batch_size, "steps": trainer.global_step, "timed_steps": timed_steps,
        "skipped": getattr(rule, "skipped_batches", 0),
        "images_per_s": timer.images / seconds if seconds == seconds and seconds > 0 else float("nan"),
        "ms_per_step": 1000 * seconds / timed_steps if timed_steps else float("nan"),
        "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20) if accelerator == "gpu" else None,
        "wall_s": wall, "error": error,
    }
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: List[Dict], meta: Dict) -> str:
    lines = [f"Device: {meta['device']}; torch {meta['torch']}, Lightning {meta['lightning']}; "
             f"3072 -> 6 x {rows[0]['width'] if rows else '?'}, batch {rows[0]['batch_per_process'] if rows else '?'} per process; "
             f"{meta['timed_steps']} timed steps after {meta['warmup']} warm-up steps.", "",
             "| run | precision | strategy (module) | images/s | ms/step | peak GPU MiB | skipped | error |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        peak = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        lines.append(f"| {r['run']} | {r['precision']} | {r['strategy']} ({r['wrapper']}) | {r['images_per_s']:.0f} | "
                     f"{r['ms_per_step']:.2f} | {peak} | {r['skipped']} | {r['error'] or ''} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--accelerator", default="gpu", help="gpu (the point); cpu for a smoke test")
    parser.add_argument("--width", type=int, default=None, help="smoke tests only: a narrower network")
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        raise ValueError(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        print("error: no CUDA device visible", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if args.accelerator == "gpu" else platform.processor() or "cpu"
    runs = [
        ("bp", "bp", "64-true", "auto", {}),
        ("gait_norm", "gait_norm", "64-true", "auto", {}),
        ("bp", "bp", "32-true", "auto", {}),
        ("gait_norm", "gait_norm", "32-true", "auto", {"on_nonfinite": "skip"}),
        ("gait_norm difference form", "gait_norm", "32-true", "auto", {"target_mode": "difference"}),
    ]
    if not args.skip_ddp:
        runs += [
            ("bp", "bp", "64-true", "ddp", {}),
            ("gait_norm", "gait_norm", "64-true", "ddp", {}),
        ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        per_file = max(512, (args.steps * 256) // 5 + 256)  # one epoch covers every run
        data_dir = write_fake_cifar(Path(tmp), per_file)
        for label, config, precision, strategy, overrides in runs:
            rows.append(run(label, config, precision, data_dir=data_dir, steps=args.steps, warmup=args.warmup,
                            accelerator=args.accelerator, strategy=strategy, width=args.width, overrides=overrides))
    meta = {"device": device, "torch": torch.__version__, "lightning": pl.__version__,
            "timed_steps": args.steps - args.warmup, "warmup": args.warmup}
    table = markdown(rows, meta)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.markdown:
        args.markdown.write_text(table)
    return 0 if all(r["error"] is None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
