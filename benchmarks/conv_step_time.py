"""``python -m benchmarks.conv_step_time``: GAIT-N against backprop on the invertible CNN.

The regimes of ``conf/conv/`` as ``fit`` builds them (default network: 8 layers, 362,624
parameters), on one batch of uniform noise shaped ``(batch, 3, 32, 32)`` (a step costs the
same on real images: every operation is dense). Two ways to time a step:

* bare (the default): the step :mod:`benchmarks.bench` times (the rule's
  ``local_gradients`` plus the orthogonality surrogate's gradient when the config has a
  penalty, then one Adam step), the variants round-robin within each repetition, the
  order rotating; a ratio is the median over repetitions of ``variant / backprop`` in the
  same repetition and dtype;
* ``--lightning``: the rule's real ``training_step`` under a ``Trainer`` (Lightning's
  hooks, logging, metrics and the rule's checks included), timed from
  ``on_train_batch_start`` to ``on_train_batch_end``; the variants take turns in rounds
  of ``--steps`` batches each (a fresh ``Trainer`` per round, the order rotating), and a
  ratio is the median over rounds of ``variant / backprop``, each the median step of its
  round after the first. With ``--split`` the step is also split by the library's
  profiler ranges (:mod:`benchmarks.split`) and with ``--diagnostics`` the configured
  diagnostics callbacks are timed (cost of one measurement, and per step at their
  ``every_n_steps``).

Variants (``benchmarks/variants.yaml``, group ``conv``): ``conv_bp`` (``conf/conv/bp.yaml``, no penalty), ``conv_gait_n``
(``conf/conv/gait_norm.yaml``: difference form, penalty 100), ``conv_gait_n_diff`` (the
same with the difference form set explicitly), ``conv_gait_n_orthogonal`` and
``conv_bp_orthogonal`` (``conf/variants/orthogonal.yaml`` stacked: every square layer
orthogonal by construction, no penalty). Run from the repository root::

    python -m benchmarks.conv_step_time                      # float64 and float32, bare steps
    python -m benchmarks.conv_step_time --dtypes float32 --lightning --split --diagnostics \
        --variants conv_bp conv_gait_n conv_gait_n_orthogonal --csv benchmarks/conv_cpu.csv \
        --markdown benchmarks/conv_cpu.md
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch

from lightning_gait.callbacks import DiagnosticCallback
from lightning_gait.malloc import describe, keep_freed_memory

from .split import profile_split
from .step_time import quantiles
from .variants import StepRunner, Variant, load_variants, make_trainer, same_batch_loader, sync

__all__ = ["CONV_VARIANTS", "DEFAULT_VARIANTS", "time_conv", "time_conv_lightning", "diagnostics_cost", "main"]

#: the CNN's variants (``benchmarks/variants.yaml``, group ``conv``) and what a plain run times
CONV_VARIANTS, _SETS = load_variants("conv")
DEFAULT_VARIANTS = _SETS["default"]


def time_conv(names: Sequence[str], *, dtype: torch.dtype, device: torch.device, batch: int, repeats: int,
              warmup: int, budget_s: float, seed: int = 0) -> List[dict]:
    """Round-robin step times of the variants ``names`` in ``dtype``; one row per variant."""
    runners = {name: StepRunner(CONV_VARIANTS[name], width=None, depth=None, batch=batch, dtype=dtype,
                                device=device, seed=seed) for name in names}

    def timed(name: str) -> float:
        sync(device)
        start = time.perf_counter()
        runners[name].step()
        sync(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        for name in names:
            timed(name)
    times: Dict[str, List[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for rep in range(repeats):
        order = list(names[rep % len(names):]) + list(names[: rep % len(names)])
        for name in order:
            times[name].append(timed(name))
        if rep + 1 >= 3 and time.perf_counter() - start > budget_s:
            break

    head = {"device": device.type, "dtype": str(dtype).replace("torch.", ""), "batch": batch}
    return [_timing_row(name, runners[name], head, times[name], times, counts={"repeats": len(times[name])})
            for name in names]


def _timing_row(name: str, runner: StepRunner, head: dict, samples: Sequence[float],
                paired_with: Dict[str, List[float]], *, counts: dict, ranges: bool = False) -> dict:
    """One variant's row: ``head``, the variant, ``counts``, the quartiles of ``samples`` (ms) and
    the median (with ``ranges``, also min and max) of its paired ratios to its baseline's
    entries of ``paired_with``."""
    variant = CONV_VARIANTS[name]
    q1, med, q3 = quantiles(samples)
    base = paired_with.get(variant.baseline)
    paired = [a / b for a, b in zip(paired_with[name], base)] if base else []
    row = {**head, "variant": name, "regime": variant.regime, "overrides": " ".join(variant.overrides), **counts,
           "median_ms": med * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
           "ratio": statistics.median(paired) if paired else None}
    if ranges:
        row.update(ratio_min=min(paired) if paired else None, ratio_max=max(paired) if paired else None)
    row["parameters"] = sum(p.numel() for p in runner.net.parameters())
    return row


class _StepClock(pl.Callback):
    """Wall time of every training batch, ``on_train_batch_start`` to ``on_train_batch_end``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: List[float] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(self.device)
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        self.seconds.append(time.perf_counter() - self._t)


def _fit_steps(runner: StepRunner, steps: int, callbacks: Sequence[pl.Callback] = ()) -> List[float]:
    """``steps`` training batches of ``runner``'s rule under a fresh bare Trainer; seconds per batch."""
    clock = _StepClock(runner.device)
    trainer = make_trainer(runner.device, runner.x.dtype, steps, [clock, *callbacks])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(runner.rule, train_dataloaders=same_batch_loader(runner, steps))
    if len(clock.seconds) < steps:
        raise RuntimeError(f"{runner.variant.name}: training stopped after {len(clock.seconds)} of {steps} steps")
    return clock.seconds


def time_conv_lightning(names: Sequence[str], *, dtype: torch.dtype, device: torch.device, batch: int,
                        rounds: int, steps: int, budget_s: float, seed: int = 0) -> List[dict]:
    """Step times of ``training_step`` under Lightning, the variants taking turns in rounds."""
    runners = {name: StepRunner(CONV_VARIANTS[name], width=None, depth=None, batch=batch, dtype=dtype,
                                device=device, seed=seed) for name in names}
    for name in names:  # warm-up: one short fit each
        _fit_steps(runners[name], 2)
    per_round: Dict[str, List[float]] = {name: [] for name in names}
    every: Dict[str, List[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for rnd in range(rounds):
        order = list(names[rnd % len(names):]) + list(names[: rnd % len(names)])
        for name in order:
            seconds = _fit_steps(runners[name], steps)[1:]  # the first batch of a fit pays for its setup
            per_round[name].append(statistics.median(seconds))
            every[name].extend(seconds)
        if rnd + 1 >= 3 and time.perf_counter() - start > budget_s:
            break
    head = {"mode": "lightning", "device": device.type, "dtype": str(dtype).replace("torch.", ""), "batch": batch}
    return [_timing_row(name, runners[name], head, every[name], per_round, ranges=True,
                        counts={"repeats": len(per_round[name]), "steps": len(every[name])})
            for name in names]


def split_conv(names: Sequence[str], *, dtype: torch.dtype, device: torch.device, batch: int, steps: int,
               seed: int = 0) -> List[dict]:
    """The split of each variant's ``training_step`` by the profiler ranges (:func:`benchmarks.split.profile_split`)."""
    rows = []
    for name in names:
        runner = StepRunner(CONV_VARIANTS[name], width=None, depth=None, batch=batch, dtype=dtype, device=device,
                            seed=seed)
        split = profile_split(runner, steps=steps, warmup=2)
        if split is not None:
            rows.append({"dtype": str(dtype).replace("torch.", ""), "variant": name, "steps": steps, **split})
    return rows


def _configured_diagnostics(variant: Variant) -> List[DiagnosticCallback]:
    """The diagnostics callbacks ``fit`` attaches for ``variant`` (its config's ``trainer.callbacks``)."""
    from lightning_gait.fit import _build_cli

    from experiments.common import CONF_DIR, _quiet_lightning

    args = ["--config", str(Path(CONF_DIR) / f"{variant.regime}.yaml"), *variant.overrides, "--trainer.logger", "false"]
    with _quiet_lightning(), tempfile.TemporaryDirectory() as tmp:
        cli = _build_cli([*args, "--trainer.default_root_dir", tmp])
    return [cb for cb in cli.trainer.callbacks if isinstance(cb, DiagnosticCallback)]


def diagnostics_cost(names: Sequence[str], *, dtype: torch.dtype, device: torch.device, batch: int, steps: int,
                     seed: int = 0) -> List[dict]:
    """Per variant and diagnostics callback of its config: seconds of one measurement (the
    callback measuring at every batch of ``steps``) and that cost per training step at the
    callback's configured ``every_n_steps``."""
    rows = []
    for name in names:
        variant = CONV_VARIANTS[name]
        configured = _configured_diagnostics(variant)
        if not configured:
            continue
        runner = StepRunner(variant, width=None, depth=None, batch=batch, dtype=dtype, device=device, seed=seed)
        probes = []
        for callback in configured:
            probe = copy.deepcopy(callback)
            probe.every_n_steps = 1
            probe.charts = False
            probes.append(probe)
        _fit_steps(runner, steps, probes)
        for callback, probe in zip(configured, probes):
            once = probe.seconds_spent / steps
            rows.append({"dtype": str(dtype).replace("torch.", ""), "variant": name,
                         "callback": type(callback).__name__, "every_n_steps": callback.every_n_steps,
                         "measurement_ms": once * 1e3,
                         "per_step_ms": once * 1e3 / callback.every_n_steps if callback.every_n_steps else 0.0})
    return rows


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _write_csv(path: str, rows: List[dict]) -> None:
    fields: List[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(meta: dict, rows: List[dict], splits: List[dict], diagnostics: List[dict]) -> str:
    """The tables of one run, with the machine they were measured on."""
    out = [f"# CNN step time: GAIT-N against backprop ({meta['date']})", "",
           f"{meta['processor']}, {meta['threads']} torch threads, torch {meta['torch']}, batch {meta['batch']}; "
           f"load average {meta['load_start']} at the start, {meta['load_end']} at the end; "
           f"malloc: {meta.get('malloc', 'not recorded')}.", "",
           f"Command: `{meta['command']}`", "",
           "| mode | dtype | variant | median step (ms) | q1-q3 (ms) | rounds | ratio to conv_bp (min-max) |",
           "|---|---|---|---:|---|---:|---|"]
    for r in rows:
        spread = f"{_fmt(r.get('ratio_min'), 2)}-{_fmt(r.get('ratio_max'), 2)}" if r.get("ratio_min") else ""
        out.append(f"| {r.get('mode', 'bare')} | {r['dtype']} | {r['variant']} | {_fmt(r['median_ms'])} | "
                   f"{_fmt(r['q1_ms'])}-{_fmt(r['q3_ms'])} | {r['repeats']} | {_fmt(r['ratio'], 2)} {spread} |")
    if splits:
        keys = ["forward", "targets", "inverses", "backward", "penalty", "optimizer", "other", "step"]
        out += ["", "Split of a `training_step` (ms per step, CPU time inside the library's profiler ranges; "
                "`inverses` lies inside `targets`; `backward`: the local gradients; `other`: Lightning's hooks, "
                "logging, metrics, checks; the profiler slows every operator):", "",
                "| dtype | variant | " + " | ".join(keys) + " |", "|---|---|" + "---:|" * len(keys)]
        for r in splits:
            out.append(f"| {r['dtype']} | {r['variant']} | " + " | ".join(_fmt(r.get(f"{k}_ms")) for k in keys) + " |")
    if diagnostics:
        out += ["", "Diagnostics callbacks of the configs (one measurement, and per training step at the "
                "configured frequency):", "",
                "| dtype | variant | callback | every_n_steps | one measurement (ms) | per step (ms) |",
                "|---|---|---|---:|---:|---:|"]
        for r in diagnostics:
            out.append(f"| {r['dtype']} | {r['variant']} | {r['callback']} | {r['every_n_steps']} | "
                       f"{_fmt(r['measurement_ms'])} | {_fmt(r['per_step_ms'], 2)} |")
    return "\n".join(out) + "\n"


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "unknown"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv_step_time", description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(CONV_VARIANTS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20, help="bare steps: repetitions")
    parser.add_argument("--warmup", type=int, default=2, help="bare steps: warm-up repetitions")
    parser.add_argument("--budget-s", type=float, default=120.0, help="per dtype: stop after 3 repetitions once spent")
    parser.add_argument("--lightning", action="store_true", help="time training_step under a Trainer instead")
    parser.add_argument("--rounds", type=int, default=8, help="--lightning: rounds (each variant once per round)")
    parser.add_argument("--steps", type=int, default=4, help="--lightning: batches per variant and round")
    parser.add_argument("--split", action="store_true", help="also split each variant's step by profiler ranges")
    parser.add_argument("--split-steps", type=int, default=3)
    parser.add_argument("--diagnostics", action="store_true", help="also time the configs' diagnostics callbacks")
    parser.add_argument("--diagnostics-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--csv", default=None, help="write the step rows to this CSV file")
    parser.add_argument("--markdown", default=None, help="write every table, with the machine, to this file")
    args = parser.parse_args(argv)
    if "conv_bp" not in args.variants:
        parser.error("--variants must include conv_bp, the baseline of every ratio")
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = describe(keep_freed_memory())
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    meta = {"processor": where, "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": args.batch,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": _load(), "malloc": malloc,
            "command": "python -m benchmarks.conv_step_time " + " ".join(argv if argv is not None else
                                                                         __import__("sys").argv[1:])}
    print(f"# {where}, {meta['threads']} threads, torch {meta['torch']}, batch {args.batch}, "
          f"load average {meta['load_start']}, malloc: {malloc}", flush=True)
    rows: List[dict] = []
    splits: List[dict] = []
    diagnostics: List[dict] = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        if args.lightning:
            timed = time_conv_lightning(args.variants, dtype=dtype, device=device, batch=args.batch,
                                        rounds=args.rounds, steps=args.steps, budget_s=args.budget_s)
        else:
            timed = time_conv(args.variants, dtype=dtype, device=device, batch=args.batch, repeats=args.repeats,
                              warmup=args.warmup, budget_s=args.budget_s)
        for row in timed:
            row["processor"] = where
            rows.append(row)
            print(f"{row['dtype']:8s} {row['variant']:24s} {row['median_ms']:9.1f} ms "
                  f"(q1 {row['q1_ms']:.1f}, q3 {row['q3_ms']:.1f}, n={row['repeats']})  "
                  f"ratio to conv_bp {row['ratio']:.2f}", flush=True)
        if args.split:
            for row in split_conv(args.variants, dtype=dtype, device=device, batch=args.batch,
                                  steps=args.split_steps):
                splits.append(row)
                print(f"split {row['dtype']} {row['variant']}: " + ", ".join(
                    f"{k[:-3]} {v:.1f}" for k, v in row.items() if k.endswith("_ms")), flush=True)
        if args.diagnostics:
            for row in diagnostics_cost(args.variants, dtype=dtype, device=device, batch=args.batch,
                                        steps=args.diagnostics_steps):
                diagnostics.append(row)
                print(f"diagnostics {row['dtype']} {row['variant']} {row['callback']}: one measurement "
                      f"{row['measurement_ms']:.1f} ms, {row['per_step_ms']:.2f} ms per step "
                      f"(every {row['every_n_steps']})", flush=True)
    meta["load_end"] = _load()
    if args.csv:
        _write_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(meta, rows, splits, diagnostics))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
