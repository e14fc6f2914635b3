"""``python -m experiments.stacks``: run an experiment's config stacks and collect their curves.

An *experiment* is a file ``experiments/grids/NAME.yaml``: a list of *stacks* (each a list
of configs that ``fit`` takes as repeated ``--config``: a regime first, then small variant
files from ``conf/variants/``), the seeds, and optionally further ``fit`` options shared by
every run::

    # BP and GAIT-N on the paper's MLP for the paper's 200 epochs
    stacks:
      - [bp, variants/f32]
      - [gait_norm, variants/f32, variants/difference]
    seeds: [0]

A run's name derives from its stack (:func:`run_name`: ``gait_norm+f32+difference``). Each
run trains with the stack, the seed (``seed_everything`` and ``data.shuffle_seed``), the
data folder, a CSV logger and the test set evaluated with every validation (so its curve
has a ``test/acc`` column beside ``val/acc``; choices read ``val/``, ``test/`` only reports).

Outputs go to ``outputs/NAME/RUN_sSEED/``; each start of a run (the first, and each
resume from the ``last.ckpt`` it finds there) logs to its own segment ``part{k}/`` (the CSV
logger rewrites a ``metrics.csv`` it finds, which would lose the epochs before a resume).
``sync`` joins a run's segments into ``results/NAME/RUN_sSEED/metrics.csv`` and copies the
resolved ``config.yaml`` the run trained with beside it.

Commands::

    python -m experiments.stacks run paper200           # start or resume every run
    python -m experiments.stacks run paper200 --only gait_norm+f32+difference --seeds 1
    python -m experiments.stacks sync paper200
    python -m experiments.stacks list paper200          # the runs and their fit commands
    python -m experiments.stacks run fair_cnn_mlp --jobs 12 --fit-args --trainer.accelerator gpu
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from .common import DEFAULT_DATA_DIR

GRIDS_DIR = Path(__file__).resolve().parent / "grids"
OUTPUTS_DIR = Path("outputs")
RESULTS_DIR = Path("results")


class GridError(ValueError):
    """An experiment file that cannot be run (missing, or not of the form above)."""


@dataclass(frozen=True)
class Run:
    """One run of an experiment: its config stack, seed and the extra ``fit`` options."""

    experiment: str
    stack: tuple
    seed: int
    args: tuple = ()

    @property
    def name(self) -> str:
        return run_name(self.stack)

    @property
    def run_id(self) -> str:
        return f"{self.name}_s{self.seed}"


def run_name(stack: Sequence[str]) -> str:
    """``["conv/gait_norm", "variants/f32"]`` -> ``"conv-gait_norm+f32"``: the regime with ``/``
    as ``-``, then each further config's file name, joined by ``+``."""
    first, *rest = stack
    return "+".join([first.replace("/", "-")] + [Path(name).name for name in rest])


def grid_names() -> List[str]:
    return sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))


def load_grid(name: str) -> List[Run]:
    """The runs of experiment ``name`` (``experiments/grids/{name}.yaml``), seed by seed."""
    path = GRIDS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise GridError(f"no experiment {name!r} (no {path}); experiments: {', '.join(grid_names()) or 'none'}")
    spec = yaml.safe_load(path.read_text()) or {}
    stacks, seeds, args = spec.get("stacks"), spec.get("seeds", [0]), spec.get("args", [])
    if not isinstance(stacks, list) or not stacks or not all(isinstance(s, list) and s for s in stacks):
        raise GridError(f"{path}: 'stacks' must be a non-empty list of non-empty lists of config names")
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise GridError(f"{path}: 'seeds' must be a list of integers")
    names = [run_name(s) for s in stacks]
    if len(set(names)) != len(names):
        raise GridError(f"{path}: two stacks give the same run name")
    return [Run(name, tuple(stack), seed, tuple(str(a) for a in args)) for seed in seeds for stack in stacks]


def fit_command(run: Run, *, data_dir: str, outputs: Path, log_version: str = "part1",
                ckpt_path: Optional[Path] = None) -> List[str]:
    """The ``fit`` command line of ``run``, logging to ``OUTPUTS/EXPERIMENT/RUN_ID/{log_version}/``."""
    folder = outputs / run.experiment
    cmd = [sys.executable, "-m", "lightning_gait.fit"]
    for config in run.stack:
        cmd += ["--config", config]
    cmd += [
        *run.args,
        "--seed_everything", str(run.seed),
        "--data.data_dir", data_dir, "--data.download", "false",
        "--data.shuffle_seed", str(run.seed),
        "--data.test_every_epoch", "true",
        "--trainer.default_root_dir", str(folder / run.run_id),
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(folder), "--trainer.logger.name", run.run_id,
        "--trainer.logger.version", log_version,
        "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "false",
    ]
    if ckpt_path is not None:
        cmd += ["--ckpt_path", str(ckpt_path)]
    return cmd


def segments(run_dir: Path) -> List[Path]:
    """The run's segment folders ``part{k}`` that hold a ``metrics.csv``, by ``k``."""
    found = [p for p in run_dir.glob("part*") if p.name[4:].isdigit() and (p / "metrics.csv").is_file()]
    return sorted(found, key=lambda p: int(p.name[4:]))


def next_version(run_dir: Path) -> str:
    parts = [int(p.name[4:]) for p in run_dir.glob("part*") if p.name[4:].isdigit()]
    return f"part{max(parts, default=0) + 1}"


def last_checkpoint(run_dir: Path) -> Optional[Path]:
    """The ``last.ckpt`` of the latest segment that has one."""
    parts = sorted((p for p in run_dir.glob("part*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
    found = [p / "checkpoints" / "last.ckpt" for p in parts if (p / "checkpoints" / "last.ckpt").is_file()]
    return found[-1] if found else None


def merge_csvs(paths: Sequence[Path], dest: Path) -> Path:
    """Concatenate metrics CSVs (columns: the union, in order of appearance) into ``dest``."""
    rows: List[Dict[str, str]] = []
    columns: Dict[str, None] = {}
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns.update(dict.fromkeys(reader.fieldnames or []))
            rows.extend(reader)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return dest


def sync_run(run: Run, outputs: Path = OUTPUTS_DIR, results: Path = RESULTS_DIR) -> Optional[Path]:
    """Write ``results/EXPERIMENT/RUN_ID/metrics.csv`` (all segments) and the first segment's
    resolved ``config.yaml``; ``None`` if the run has logged nothing yet."""
    run_dir = outputs / run.experiment / run.run_id
    parts = segments(run_dir)
    if not parts:
        return None
    dest = results / run.experiment / run.run_id
    merge_csvs([p / "metrics.csv" for p in parts], dest / "metrics.csv")
    config = parts[0] / "config.yaml"
    if config.is_file():
        shutil.copyfile(config, dest / "config.yaml")
    return dest


def _start(run: Run, *, data_dir: str, outputs: Path, fit_args: Sequence[str], log: Optional[Path]):
    """Start ``run`` (resuming from its ``last.ckpt`` if it has one): ``(process, None)``, or
    ``(None, message)`` when its folder holds logs but no checkpoint to resume from."""
    run_dir = outputs / run.experiment / run.run_id
    ckpt = last_checkpoint(run_dir)
    if ckpt is None and segments(run_dir):
        return None, f"{run_dir} holds logs but no last.ckpt to resume from; remove it to start {run.run_id} again"
    version = next_version(run_dir)
    cmd = fit_command(run, data_dir=data_dir, outputs=outputs, log_version=version, ckpt_path=ckpt) + list(fit_args)
    if log is None:
        print("+", " ".join(cmd), flush=True)
        return subprocess.Popen(cmd), None
    log = run_dir / f"{version}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"+ {' '.join(cmd)}\n  (output: {log})", flush=True)
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), None


def run_all(runs: Sequence[Run], *, data_dir: str, outputs: Path, results: Path, fit_args: Sequence[str] = (),
            jobs: int = 1) -> int:
    """Run (or resume) ``runs``, ``jobs`` at a time, syncing each run's results when it ends.

    With one job, runs go in order, each printing to this terminal, and the first failure
    stops the rest. With several, each run's output goes to ``RUN_ID/part{k}.log`` beside its
    segment, a failure is reported and the other runs go on; the exit code is the first
    failure's (0 if none failed).
    """
    pending, active, failed = list(runs), {}, 0
    while pending or active:
        while pending and len(active) < jobs:
            run = pending.pop(0)
            process, problem = _start(run, data_dir=data_dir, outputs=outputs, fit_args=fit_args,
                                      log=None if jobs == 1 else outputs)
            if problem:
                print(problem, file=sys.stderr, flush=True)
                failed = failed or 1
                if jobs == 1:
                    return failed
                continue
            active[process] = run
        done = next((p for p in active if p.poll() is not None), None)
        if done is None:
            if jobs == 1:
                next(iter(active)).wait()
            else:
                time.sleep(0.5)
            continue
        run, code = active.pop(done), done.returncode
        sync_run(run, outputs, results)
        if code != 0:
            print(f"run {run.run_id} exited with {code}", file=sys.stderr, flush=True)
            failed = failed or code
            if jobs == 1:
                return code
        elif jobs > 1:
            print(f"done: {run.run_id}", flush=True)
    return failed


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.stacks", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "sync", "list"])
    parser.add_argument("experiment", help=f"a file of {GRIDS_DIR} without .yaml")
    parser.add_argument("--only", nargs="+", default=None, help="run names to keep")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="these seeds instead of the file's")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--outputs", default=str(OUTPUTS_DIR))
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (each then logs to RUN_ID/part{k}.log beside its segment)")
    parser.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[],
                        help="further options passed to fit as they are (give last)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        print(f"error: --jobs {args.jobs}: give 1 or more runs at once", file=sys.stderr)
        return 2
    try:
        runs = load_grid(args.experiment)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.only:
        unknown = sorted(set(args.only) - {r.name for r in runs})
        if unknown:
            print(f"error: not runs of {args.experiment}: {', '.join(unknown)}; its runs: "
                  f"{', '.join(dict.fromkeys(r.name for r in runs))}", file=sys.stderr)
            return 2
        runs = [r for r in runs if r.name in args.only]
    if args.seeds is not None:  # the given seeds instead of the file's
        stacks = list(dict.fromkeys((r.stack, r.args) for r in runs))
        runs = [Run(args.experiment, stack, seed, extra) for seed in args.seeds for stack, extra in stacks]
    outputs, results = Path(args.outputs), Path(args.results)
    if args.command == "run":
        return run_all(runs, data_dir=args.data_dir, outputs=outputs, results=results, fit_args=args.fit_args,
                       jobs=args.jobs)
    if args.command == "sync":
        for run in runs:
            dest = sync_run(run, outputs, results)
            print(dest if dest else f"{run.run_id}: nothing logged yet")
        return 0
    for run in runs:
        print(run.run_id, " ".join(fit_command(run, data_dir=args.data_dir, outputs=outputs)[1:]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    sys.exit(main())
