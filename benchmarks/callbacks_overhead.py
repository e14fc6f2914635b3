"""``python -m benchmarks.callbacks_overhead``: training with and without the diagnostics callbacks.

Times a short ``trainer.fit`` of a regime of ``conf/`` (GAIT-N by default) on random
CIFAR-shaped data without and with
:class:`~lightning_gait.callbacks.BPCorrelation`, :class:`~lightning_gait.callbacks.TargetNorms`
and :class:`~lightning_gait.callbacks.Orthogonality` at their default settings, alternating,
and reports the wall-clock ratio and the time the callbacks spent measuring
(``DiagnosticCallback.seconds_spent``) against the rest of the same run.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from experiments.common import net_args, regime_cli
from lightning_gait.callbacks import default_callbacks


def fit_seconds(regime: str, callbacks: Sequence[Callback], *, steps: int, width: Optional[int],
                batch_size: int, precision: Optional[str], log_dir: str) -> float:
    """Seconds of ``trainer.fit`` for ``steps`` batches of a fresh rule of ``regime`` on random data.

    The rule comes from ``conf/{regime}.yaml`` (:func:`experiments.common.build_regime`,
    seed 0); ``precision`` ``None`` is the config's.
    """
    from pytorch_lightning.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    cli = regime_cli(regime, *net_args(width=width), seed=0)
    rule = cli.model
    precision = precision or str(cli.trainer.precision)
    n = steps * batch_size
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(n, rule.net.in_features, generator=generator),
                         torch.randint(0, rule.net.num_classes, (n,), generator=generator))
    trainer = pl.Trainer(
        max_steps=steps, precision=precision, accelerator="auto", devices=1, logger=CSVLogger(log_dir),
        callbacks=list(callbacks), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, log_every_n_steps=50,
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.fit(rule, DataLoader(data, batch_size=batch_size))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Side-by-side timing of training with and without the three callbacks at their defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.callbacks_overhead",
        description="Time a short fit (conf/gait_norm.yaml by default) without and with "
        "BPCorrelation, TargetNorms and Orthogonality at their default settings.",
    )
    parser.add_argument("--regime", default="gait_norm", help="a config in conf/ (gait_norm: GAIT-N)")
    parser.add_argument("--steps", type=int, default=200, help="a multiple of 100, so that every callback "
                        "measures at exactly its default rate")
    parser.add_argument("--width", type=int, default=None, help="network width (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", default=None, help="Lightning precision (default: the config's)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating off/on pairs; medians are reported")
    args = parser.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    off, on, spent = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(width=args.width, batch_size=args.batch_size, precision=args.precision, log_dir=tmp)
        fit_seconds(args.regime, [], steps=3, **common)  # warm-up
        for _ in range(args.repeats):
            off.append(fit_seconds(args.regime, [], steps=args.steps, **common))
            callbacks = default_callbacks()
            for cb in callbacks:
                cb.synchronize_timing = True
            on.append(fit_seconds(args.regime, callbacks, steps=args.steps, **common))
            spent.append({type(cb).__name__: (cb.seconds_spent, len(cb.history)) for cb in callbacks})
    off_t = sorted(off)[len(off) // 2]
    on_t = sorted(on)[len(on) // 2]
    in_run = [sum(s for s, _ in d.values()) / (t - sum(s for s, _ in d.values())) for t, d in zip(on, spent)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"regime={args.regime} precision={args.precision or 'config'} width={args.width or 'config'} "
          f"batch={args.batch_size} "
          f"steps={args.steps} device={device} threads={torch.get_num_threads()}")
    print(f"off: {', '.join(f'{t:.2f}' for t in off)} s; on: {', '.join(f'{t:.2f}' for t in on)} s")
    for name, (seconds, count) in spent[-1].items():
        print(f"  {name}: {count} measurements, {seconds:.2f} s ({seconds / max(count, 1):.3f} s each)")
    print(f"wall-clock ratio on/off (median) = {on_t / off_t:.3f}")
    print(f"in-run overhead (callback time / rest of the same run) = {sorted(in_run)[len(in_run) // 2]:.3f}")


if __name__ == "__main__":
    main()
