"""An experiment's curves as committed: ``results/EXPERIMENT/RUN_sSEED/metrics.csv`` beside the
``config.yaml`` the run trained with.

``metrics.csv`` is the CSV logger's file of a ``fit`` run (the segments of a resumed run joined by
``python -m experiments.stacks sync``): ``val/acc`` per validation, ``test/acc`` beside it when the
run evaluated the test set with each validation (``data.test_every_epoch``), and the diagnostics'
columns (``bp_corr/layer_k`` ...) logged by step. A run whose config says ``val_size: 0`` validated
on the test set (the protocol of the earlier runs): its ``val/acc`` *is* test accuracy, and it has
no validation accuracy of its own; :func:`read_epochs` reports it as ``test_acc`` and leaves
``val_acc`` out, so that nothing reads a choice off the test set by mistake.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

__all__ = ["RESULTS_DIR", "RunResult", "runs", "read_epochs", "read_config", "val_is_test", "grid_spec"]

RESULTS_DIR = Path("results")
_RUN_ID = re.compile(r"^(?P<name>.+)_s(?P<seed>\d+)$")


@dataclass(frozen=True)
class RunResult:
    """One run's folder ``results/EXPERIMENT/NAME_sSEED/``."""

    folder: Path
    name: str
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.name}_s{self.seed}"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.csv"

    @property
    def config_path(self) -> Path:
        return self.folder / "config.yaml"

    def config(self) -> Dict:
        return read_config(self.config_path)

    def epochs(self) -> List[Dict[str, float]]:
        return read_epochs(self.metrics, val_is_test=val_is_test(self.config()) if self.config_path.is_file() else None)


def runs(folder: Path, names: Optional[Sequence[str]] = None) -> List[RunResult]:
    """The runs of an experiment's results folder (``NAME_sSEED/`` holding a ``metrics.csv``), by name
    then seed; only ``names`` when given."""
    found = []
    for path in sorted(Path(folder).glob("*_s*/metrics.csv")):
        match = _RUN_ID.match(path.parent.name)
        if match and (names is None or match["name"] in names):
            found.append(RunResult(path.parent, match["name"], int(match["seed"])))
    return sorted(found, key=lambda r: (r.name, r.seed))


def read_config(path: Path) -> Dict:
    return yaml.safe_load(Path(path).read_text()) or {}


def val_is_test(config: Dict) -> bool:
    """Whether the run validated on the test set (``data.init_args.val_size`` 0)."""
    data = config.get("data") or {}
    return int((data.get("init_args") or {}).get("val_size", 5000)) == 0


def read_epochs(path: Path, *, val_is_test: Optional[bool] = None) -> List[Dict[str, float]]:
    """One dict per finished epoch of a ``fit`` metrics CSV: ``epoch`` (1-based), ``step``, ``test_acc``
    (``test/acc``; ``val/acc`` when ``val_is_test``), ``val_acc`` (``val/acc`` of a held-out split;
    absent when ``val_is_test``), ``train_acc``, ``time_s`` (``time/epoch_s``), and the last value of
    each diagnostic logged by step (``bp_corr/layer_k``, ``bp_norm_ratio/layer_k``, ``ortho/layer_k``)
    at or before the epoch's last step. ``val_is_test=None``: ``val/acc`` counts as test accuracy only
    when the CSV has no ``test/acc`` column. An epoch logged twice (before an interruption and again
    after the resume) counts once: the later row wins."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    has_test = bool(rows) and "test/acc" in rows[0]
    if val_is_test is None:
        val_is_test = not has_test
    by_epoch: Dict[int, Dict[str, float]] = {}
    logged: Dict[int, Dict[str, float]] = {}  # step -> diagnostics logged at that step
    for row in rows:
        step = int(float(row["step"])) if row.get("step") else None
        diag = {k: float(v) for k, v in row.items()
                if k.startswith(("bp_corr/", "bp_norm_ratio/", "ortho/")) and v not in ("", None)}
        if diag and step is not None:
            logged.setdefault(step, {}).update(diag)
        if not row.get("epoch"):
            continue
        epoch = int(float(row["epoch"]))
        entry = by_epoch.setdefault(epoch, {})
        if row.get("val/acc"):
            if val_is_test:
                entry["test_acc"] = float(row["val/acc"])
            else:
                entry["val_acc"] = float(row["val/acc"])
            if step is not None:
                entry["step"] = step
        if row.get("test/acc") and not val_is_test:
            entry["test_acc"] = float(row["test/acc"])
        if row.get("train/acc_epoch"):
            entry["train_acc"] = float(row["train/acc_epoch"])
        if row.get("time/epoch_s"):
            entry["time_s"] = float(row["time/epoch_s"])
    out = []
    for epoch in sorted(by_epoch):
        entry = by_epoch[epoch]
        if "test_acc" not in entry and "val_acc" not in entry:
            continue
        steps = [s for s in logged if "step" in entry and s <= entry["step"]]
        diag: Dict[str, float] = {}
        for s in sorted(steps):  # the last value of each key at or before the epoch's end
            diag.update(logged[s])
        out.append({"epoch": epoch + 1, **entry, **diag})
    return out


def grid_spec(name: str) -> Dict:
    """The experiment file ``experiments/grids/NAME.yaml`` as a dict (empty when there is none): its
    ``stacks``, and what readers use, ``labels`` (run -> table label) and ``figures``."""
    from .stacks import GRIDS_DIR

    path = GRIDS_DIR / f"{name}.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
