"""Peers of GAIT-prop (TP, FA) and GAIT-S: what they learn on a short budget, and why.

The experiment is ``experiments/grids/peers.yaml``: its ``stacks`` are trained, its ``probe`` stacks
measured at initialisation, each through ``fit``'s own parser (:func:`experiments.common.stack_cli`:
the regime's config in ``conf/`` and the variant files that make the run, float64 as the configs,
Adam, batch 256, loss summed over the batch; the grid's ``args``: all 50,000 training images,
``val_size 0``, no validation loop). Three commands:

* ``run GRID``: each stack trained for its ``trainer.max_steps`` (``variants/steps_N``) by the
  library's Lightning path (the rule's ``training_step``, the config's DataModule, seed 0, the same
  data order for every stack), with the diagnostics below every ``max(49, steps // 4)`` steps,
  written to ``results/GRID/RUN_s0/metrics.csv`` beside the resolved ``config.yaml`` (what
  ``fit --config`` trains: the same stack, seed and steps, without these probes);
* ``probe GRID``: single-batch diagnostics of each ``probe`` stack at initialisation (cheap, no
  training), one row per stack and layer, in ``results/GRID/init.csv`` (``setting``: the run name);
* ``table GRID``: the final test accuracy of each run, from the CSVs.

Diagnostics, per layer ``k`` (1 at the input), on one fixed batch (the first 256 training images):

* ``corr_k``, ``ratio_k``: Pearson correlation of the rule's weight update with
  backprop's gradient of the same loss, and the norm ratio ``||dW|| / ||dW_bp||``
  (:func:`lightning_gait.diagnostics.rule_alignment`);
* ``e_k``: batch mean of ``||t_k - a_k||`` (target rules);
* ``roundoff_k``: the same norm with a zero output error (every difference is then
  round-off of forming targets and subtracting activations) divided by ``e_k``: near 1,
  the layer's update is round-off (target rules);
* ``cross_k``: fraction of entries whose target and activation have opposite signs, i.e.
  lie on both sides of the leaky ReLU's kink at 0 (target rules that form targets; the
  SL-ReLU is smooth at 0, so there it only counts sign changes);
* ``descent_k``: the first-order loss decrease of a sign step ``-lr sign(dW_k)`` of layer
  ``k`` alone (what Adam's first steps are) divided by backprop's over all layers,
  ``bp_descent = sum_k ||dW_bp_k||_1`` (per unit ``lr``); the sum over ``k`` is 1 for
  backprop, 0 for updates unrelated to the gradient;
* ``bcos_k``: cosine between the rule's updates of two different batches (the second:
  training images 256-511); backprop's are 0.2-0.4 at initialisation, near 1 means a
  drift that does not depend on the batch;
* ``wnorm_k``: ``||W_k||_F / sqrt(rows)`` (1 for a (semi-)orthogonal matrix);
* ``ortho``, ``cond``: mean ``||W W^T - I||_F / sqrt(n)`` and largest condition number
  over the square layers;
* ``test_acc``: accuracy on the first ``--eval-images`` test images (all 10,000 at the
  last step of a run): the probes read the test set, so a choice read from them is read on test.

A CSV row's ``budget`` is the run's steps (196 = one epoch), ``epoch`` is ``step / 196``. The
committed CSVs come from these commands, run from the repository root (about 45 minutes in all on
two busy cores; one epoch of TP or GAIT is 2-5 minutes there, FA's 1-2)::

    export OMP_NUM_THREADS=1
    python -m experiments.peers probe peers
    python -m experiments.peers run peers
    python -m experiments.peers table peers
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from lightning_gait.diagnostics import (
    backprop_gradients,
    condition_number,
    orthogonality_deviation,
    rule_alignment,
)
from lightning_gait.targets import output_gradient

from .common import DEFAULT_DATA_DIR, resolved_config, stack_args, stack_cli
from .stacks import RESULTS_DIR, GridError, Run, load_grid, run_name

#: the run's Trainer: no logger, checkpoints or validation loop (the probes evaluate the test set)
TRAINER_ARGS = ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
                "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
                "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                "--trainer.enable_model_summary", "false"]


# ---------------------------------------------------------------------------- building
def run_args(run: Run, *, data_dir, fit_args=()) -> List[str]:
    """The ``fit`` arguments of ``run`` as this module trains it (its stack, the grid's args, seed, data
    folder, the Trainer of :data:`TRAINER_ARGS`, then ``fit_args``): its ``config.yaml`` is what
    ``fit --print_config`` resolves them to."""
    return [*stack_args(run.stack), *run.args, "--seed_everything", str(run.seed),
            "--data.data_dir", str(data_dir), "--data.download", "false", *TRAINER_ARGS, *fit_args]


def build(stack, *overrides: str, seed: int = 0):
    """The rule of ``stack`` (with ``overrides``) drawn under ``seed``, in its config's precision, and
    fit's CLI (its ``datamodule``, ``config``)."""
    cli = stack_cli(stack, *overrides, seed=seed)
    dtype = torch.float64 if str(cli.trainer.precision).startswith("64") else torch.float32
    rule = cli.model.to(dtype)
    rule.reset_rule_state()  # rule-owned random draws in the run's dtype
    return rule, cli


def load_cifar(data_dir: Path, *, train: bool, count: int):
    """The first ``count`` images of a CIFAR-10 split, uint8 ``(count, 3072)``, and their labels
    (:func:`inputs` turns them into a run's inputs)."""
    from lightning_gait.data import CIFAR10DataModule

    images, labels = CIFAR10DataModule(str(data_dir), download=False, verify_checksums=False).read_split(train)
    return images[:count].reshape(min(count, len(images)), -1), labels[:count]


def inputs(cli, rule, batch):
    """``(images, labels)`` as the run's DataModule feeds its rule: in the rule's dtype, in [0, 1] or
    standardized as the config says."""
    images, labels = batch
    return cli.datamodule.preprocess(images, next(rule.parameters()).dtype), labels


# ---------------------------------------------------------------------------- diagnostics
@torch.no_grad()
def accuracy(rule, x, y, chunk: int = 2500) -> float:
    correct = 0
    for i in range(0, len(y), chunk):
        correct += int((rule.net(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum())
    return correct / len(y)


def layer_diagnostics(rule, x, y, x2, y2) -> Dict[str, float]:
    """The diagnostics of the module docstring on batch ``(x, y)`` (and ``(x2, y2)`` for ``bcos``)."""
    net = rule.net
    row: Dict[str, float] = {}
    other = rule.local_gradients(x2, y2)
    alignment = rule_alignment(rule, x, y)
    updates = rule.local_gradients(x, y)
    reference = backprop_gradients(net, x, y, loss_reduction=rule.loss_reduction)
    row["bp_descent"] = float(sum(dw.abs().sum() for dw, _ in reference))
    targets = rule.last_diagnostics if hasattr(rule.last_diagnostics, "differences") else None
    for k in range(1, net.num_layers + 1):
        row[f"corr_{k}"] = alignment[f"bp_corr/layer_{k}"]
        row[f"ratio_{k}"] = alignment[f"bp_norm_ratio/layer_{k}"]
        row[f"descent_{k}"] = float((torch.sign(updates[k - 1][0]) * reference[k - 1][0]).sum()) / row["bp_descent"]
        row[f"bcos_{k}"] = float(torch.nn.functional.cosine_similarity(
            updates[k - 1][0].flatten(), other[k - 1][0].flatten(), dim=0))
    if targets is not None:
        with torch.no_grad():
            trace = net.trace(x)
            g, _ = output_gradient(trace.output, y, net.num_classes, rule.loss_reduction)
            rule.layer_signals(trace, g, y)
            true = rule.last_diagnostics
            rule.layer_signals(trace, torch.zeros_like(g), y)
            floor = rule.last_diagnostics
        for i in range(net.num_layers):
            e = float(true.differences[i].flatten(1).norm(dim=1).mean())
            e0 = float(floor.differences[i].flatten(1).norm(dim=1).mean())
            row[f"e_{i + 1}"] = e
            row[f"roundoff_{i + 1}"] = e0 / e if e > 0 else math.nan
            if true.targets is not None and i < net.num_layers - 1:
                a, t = trace.post[i], true.targets[i]
                row[f"cross_{i + 1}"] = float(((a >= 0) != (t >= 0)).double().mean())
    for i, (weight, _) in enumerate(net.layer_parameters()):
        row[f"wnorm_{i + 1}"] = float(weight.detach().norm() / math.sqrt(weight.shape[0]))
    square = [w for _, w in net.orthogonality_terms()]
    row["ortho"] = sum(orthogonality_deviation(w) for w in square) / len(square)
    row["cond"] = max(condition_number(w) for w in square)
    return row


# ---------------------------------------------------------------------------- CSV
def write_rows(path: Path, rows: List[Dict[str, object]], *, replace=(), key=("setting",)) -> None:
    """Write ``rows`` to ``path``, keeping the earlier rows whose ``key`` columns are not in ``replace``."""
    old: List[Dict[str, object]] = []
    replace = {tuple(str(v) for v in k) for k in replace}
    if path.is_file():
        with open(path, newline="") as f:
            old = [r for r in csv.DictReader(f) if tuple(r.get(c, "") for c in key) not in replace]
    rows = old + rows
    columns: List[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: (f"{v:.6g}" if isinstance(v, float) else v) for c, v in r.items()})


def fmt(row: Dict[str, object], keys) -> str:
    return " ".join(f"{k}={row[k]:.3g}" if isinstance(row.get(k), float) else f"{k}={row.get(k)}" for k in keys)


# ---------------------------------------------------------------------------- commands
def probe(args) -> None:
    spec = load_spec(args.grid)
    raw = load_cifar(args.data_dir, train=True, count=512)
    rows = []
    for stack in spec.get("probe", []):
        name = run_name(stack)
        rule, cli = build(stack, *spec.get("args", []), "--data.data_dir", str(args.data_dir), seed=0)
        images, labels = inputs(cli, rule, raw)
        x, y, x2, y2 = images[:256], labels[:256], images[256:], labels[256:]
        diag = layer_diagnostics(rule, x, y, x2, y2)
        bp = backprop_gradients(rule.net, x, y, loss_reduction=rule.loss_reduction)
        updates = rule.local_gradients(x, y)
        for k in range(1, rule.net.num_layers + 1):
            row = {"peer": stack[0], "setting": name, "overrides": "+".join(stack), "layer": k,
                   "update_norm": float(updates[k - 1][0].norm()), "bp_norm": float(bp[k - 1][0].norm())}
            row["bp_descent"] = diag["bp_descent"]
            for key in ("e", "roundoff", "cross", "corr", "ratio", "descent", "bcos", "wnorm"):
                if f"{key}_{k}" in diag:
                    row[key] = diag[f"{key}_{k}"]
            rows.append(row)
            print(fmt(row, ["setting", "layer", "e", "roundoff", "cross", "update_norm", "bp_norm", "corr", "descent", "bcos"]))
    write_rows(Path(args.results) / args.grid / "init.csv", rows, replace={(r["setting"],) for r in rows})


class Probe:
    """A Lightning callback: diagnostics and test accuracy every ``every`` steps and at the end."""

    def __new__(cls, *args, **kwargs):
        import pytorch_lightning as pl

        class _Probe(pl.Callback):
            def __init__(self, *, setting, text, every, steps, probe_batch, test, eval_images):
                self.setting, self.text, self.every, self.steps = setting, text, every, steps
                self.probe_batch, self.test, self.eval_images = probe_batch, test, eval_images
                self.rows: List[Dict[str, object]] = []
                self.start = time.perf_counter()
                self.losses: List[float] = []

            def record(self, rule, step: int) -> None:
                final = step >= self.steps
                n = len(self.test[1]) if final else self.eval_images
                x, y = self.probe_batch
                x, y, x2, y2 = x[:256], y[:256], x[256:], y[256:]
                was_training = rule.training
                rule.eval()
                row: Dict[str, object] = {"setting": self.setting, "budget": self.steps, "overrides": self.text, "step": step,
                                          "epoch": step / 196.0,
                                          "test_acc": accuracy(rule, self.test[0][:n], self.test[1][:n]),
                                          "eval_images": n,
                                          "train_loss": (sum(self.losses) / len(self.losses)) if self.losses else math.nan}
                row.update(layer_diagnostics(rule, x, y, x2, y2))
                row["wall_s"] = time.perf_counter() - self.start
                rule.train(was_training)
                self.losses = []
                self.rows.append(row)
                print(fmt(row, ["setting", "step", "test_acc", "train_loss", "corr_1", "corr_3", "corr_5", "corr_6", "bcos_1",
                                "e_1", "roundoff_1", "wnorm_1", "ortho", "cond"]), flush=True)

            def on_train_start(self, trainer, rule) -> None:
                self.record(rule, 0)

            def on_train_batch_end(self, trainer, rule, outputs, batch, batch_idx) -> None:
                if outputs is not None:
                    loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                    self.losses.append(float(loss))
                step = trainer.global_step
                if step % self.every == 0 or step >= self.steps:
                    self.record(rule, step)

        return _Probe(*args, **kwargs)


def load_spec(grid: str) -> Dict:
    from .curves import grid_spec

    spec = grid_spec(grid)
    if not spec:
        raise GridError(f"no experiment {grid!r} in experiments/grids/")
    return spec


def probe_every(steps: int) -> int:
    """Diagnostics every 49 steps (a quarter epoch), every quarter of a longer run."""
    return max(49, steps // 4)


def run(args) -> None:
    import pytorch_lightning as pl

    from lightning_gait.targets import NonFiniteError

    runs = load_grid(args.grid)
    if args.only:
        runs = [r for r in runs if r.name in args.only]
    probe_batch = load_cifar(args.data_dir, train=True, count=512)
    test = load_cifar(args.data_dir, train=False, count=10000)
    for spec in runs:
        fit_args = run_args(spec, data_dir=args.data_dir, fit_args=args.fit_args)
        rule, cli = build(spec.stack, *fit_args[len(stack_args(spec.stack)):], seed=spec.seed)
        steps = int(cli.config.trainer.max_steps)
        if steps < 1:
            raise GridError(f"{spec.run_id}: a peers run needs trainer.max_steps (a variants/steps_N file)")
        callback = Probe(setting=spec.name, text="+".join(spec.stack), every=probe_every(steps), steps=steps,
                         probe_batch=inputs(cli, rule, probe_batch), test=inputs(cli, rule, test),
                         eval_images=args.eval_images)
        trainer = pl.Trainer(max_steps=steps, precision=str(cli.trainer.precision), accelerator="cpu", devices=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                             callbacks=[callback])
        try:
            trainer.fit(rule, datamodule=cli.datamodule)
        except NonFiniteError as err:
            callback.rows.append({"setting": spec.name, "budget": steps, "overrides": "+".join(spec.stack),
                                  "step": trainer.global_step, "status": f"non-finite: {err}"})
        for row in callback.rows:
            row["budget"] = steps
        folder = Path(args.results) / args.grid / spec.run_id
        write_rows(folder / "metrics.csv", callback.rows, replace={(spec.name,)})
        (folder / "config.yaml").write_text(resolved_config(fit_args))


def table(results: Path, grid: str) -> str:
    """Markdown: each run of the grid that has a curve, its steps and its final test accuracy."""
    import csv as _csv

    lines = ["| run | steps | test acc % at the last step |", "|---|---|---|"]
    for spec in load_grid(grid):
        path = results / grid / spec.run_id / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            rows = [r for r in _csv.DictReader(f) if r.get("test_acc")]
        if rows:
            last = max(rows, key=lambda r: int(float(r["step"])))
            lines.append(f"| {spec.run_id} | {last['step']} | {100 * float(last['test_acc']):.2f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.peers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name, help=text) for name, text in (
        ("run", "train the grid's stacks, diagnostics along the way"),
        ("probe", "single-batch diagnostics of the grid's probe stacks at initialisation"),
        ("table", "the final test accuracy of each run, from the CSVs"))}
    for name, p in commands.items():
        p.add_argument("grid", help="an experiment file of experiments/grids/ (the committed one: peers)")
        p.add_argument("--results", default=str(RESULTS_DIR), help="the folder holding GRID/")
        if name != "table":
            p.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR),
                           help=f"folder holding cifar-10-batches-py/ (default {DEFAULT_DATA_DIR})")
    commands["run"].add_argument("--only", nargs="+", default=None, help="run names to train (default: all)")
    commands["run"].add_argument("--eval-images", type=int, default=2560, help="test images at intermediate probes")
    commands["run"].add_argument("--fit-args", nargs=argparse.REMAINDER, default=[],
                                 help="further fit options, as they are (give last)")
    args = parser.parse_args(argv)
    try:
        if args.command == "probe":
            probe(args)
        elif args.command == "run":
            run(args)
        else:
            print(table(Path(args.results), args.grid))
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # the documented runs: one thread, beside other work
    sys.exit(main())
