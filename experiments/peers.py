"""Peers of GAIT-prop (TP, FA) and GAIT-S: what they learn on a short budget, and why.

Two commands, both on the real CIFAR-10 in float64 with each regime's config in ``conf/``
(Adam, batch 256, loss summed over the batch) and the named overrides below:

* ``probe``: single-batch diagnostics at initialisation (cheap, no training), one row per
  setting and layer, written to ``results/peers/init.csv``;
* ``sweep PEER``: a short training run per setting of ``PEER`` (``tp``, ``fa`` or
  ``gait_smooth``), through the library's Lightning path (the rule's ``training_step``,
  :class:`~lightning_gait.data.CIFAR10DataModule`, seed 0, same data order for every
  setting), with diagnostics every ``--probe-every`` steps, written to
  ``results/peers/{PEER}.csv`` (rows of a setting run again are replaced).

Diagnostics, per layer ``k`` (1 at the input), on one fixed batch (the first 256 training
images):

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
* ``test_acc``: accuracy on the first ``eval_images`` test images (all 10,000 at the
  last step of a run).

``sweep`` trains every setting of the peer unless ``--settings`` names some; a CSV row's
``budget`` is the run's ``--steps`` (196 steps = one epoch). The committed CSVs come from
these commands, run from the repository root (about 45 minutes in all on two busy cores;
one epoch of TP or GAIT is 2-5 minutes there, FA's 1-2)::

    export OMP_NUM_THREADS=1
    python -m experiments.peers probe
    python -m experiments.peers sweep tp --settings config ortho1000 --steps 196
    python -m experiments.peers sweep tp --settings config step5e-2 step5e-3 step5e-4 step5e-5 step5e-6 --steps 98
    python -m experiments.peers sweep fa --settings config lr1e-5 lr1e-4 lr1e-4_eps1e-6 --steps 196
    python -m experiments.peers sweep fa --settings config lr5e-5 --steps 392 --probe-every 98
    python -m experiments.peers sweep gait_smooth --settings config difference gait_config gamma1e-1 --steps 196
"""
from __future__ import annotations

import argparse
import csv
import math
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

from .common import DEFAULT_DATA_DIR, build_regime, model_args, net_args

OUT = Path("results") / "peers"

#: peer -> setting name -> (regime config, init_args overrides; ``net.X`` for the network)
SETTINGS: Dict[str, Dict[str, tuple]] = {
    "tp": {
        "config": ("tp", {}),
        "step5e-2": ("tp", {"output_step": 5e-2}),
        "step5e-3": ("tp", {"output_step": 5e-3}),
        "step5e-4": ("tp", {"output_step": 5e-4}),
        "step5e-5": ("tp", {"output_step": 5e-5}),
        "step5e-6": ("tp", {"output_step": 5e-6}),
        "ortho1000": ("tp", {"ortho_weight": 1000.0}),
    },
    "fa": {
        "config": ("fa", {}),
        "lr1e-4": ("fa", {"lr": 1e-4}),
        "lr1e-5": ("fa", {"lr": 1e-5}),
        "lr5e-5": ("fa", {"lr": 5e-5}),
        "lr1e-4_eps1e-6": ("fa", {"lr": 1e-4, "adam_eps": 1e-6, "betas": [0.9, 0.999]}),
    },
    "gait_smooth": {
        "config": ("gait_smooth", {}),
        "difference": ("gait_smooth", {"target_mode": "difference"}),
        "gait_config": ("gait", {}),  # GAIT (leaky ReLU) as the paper runs it, for comparison
        **{f"gamma{g}": ("gait_smooth", {"gamma": float(g)}) for g in ("3e-3", "1e-2", "3e-2", "1e-1", "3e-1")},
    },
}

#: what ``sweep`` trains
PEERS = tuple(SETTINGS)

#: networks that only ``probe`` measures: TP on leaky ReLUs of larger negative slope, to
#: show what the exact inverse's 1/alpha does to TP's alignment (not peers of the study)
SETTINGS["tp_alpha"] = {f"alpha{a}": ("tp", {"net.alpha": a, "output_step": 5e-2}) for a in (0.3, 0.6, 0.9)}

#: what ``probe`` measures at initialisation
PROBE_SETTINGS = (
    [("tp", s) for s in SETTINGS["tp"] if s.startswith(("config", "step"))]
    + [("tp_alpha", s) for s in SETTINGS["tp_alpha"]]
    + [("fa", "config")]
    + [("gait_smooth", s) for s in SETTINGS["gait_smooth"]]
)


# ---------------------------------------------------------------------------- building
def build(peer: str, setting: str):
    """The rule of ``setting`` (float64, seed 0) and its overrides as text."""
    regime, overrides = SETTINGS[peer][setting]
    net = {key[4:]: value for key, value in overrides.items() if key.startswith("net.")}
    rule_args = {key: value for key, value in overrides.items() if not key.startswith("net.")}
    rule = build_regime(regime, *model_args(**rule_args), *net_args(**net), seed=0).to(torch.float64)
    rule.reset_rule_state()  # rule-owned random draws in float64
    text = ";".join(f"{k}={v}" for k, v in overrides.items()) or "(config)"
    return rule, f"{regime}:{text}"


def load_cifar(data_dir: Path, *, train: bool, count: int):
    """The first ``count`` images of a split, float64 in [0, 1], and their labels."""
    from lightning_gait.data import CIFAR10DataModule

    images, labels = CIFAR10DataModule(str(data_dir), download=False, verify_checksums=False).read_split(train)
    return images[:count].to(torch.float64) / 255.0, labels[:count]


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
    images, labels = load_cifar(args.data_dir, train=True, count=512)
    x, y, x2, y2 = images[:256], labels[:256], images[256:], labels[256:]
    rows = []
    for peer, setting in PROBE_SETTINGS:
        rule, text = build(peer, setting)
        diag = layer_diagnostics(rule, x, y, x2, y2)
        bp = backprop_gradients(rule.net, x, y, loss_reduction=rule.loss_reduction)
        updates = rule.local_gradients(x, y)
        for k in range(1, rule.net.num_layers + 1):
            row = {"peer": peer, "setting": f"{peer}/{setting}", "overrides": text, "layer": k,
                   "update_norm": float(updates[k - 1][0].norm()), "bp_norm": float(bp[k - 1][0].norm())}
            row["bp_descent"] = diag["bp_descent"]
            for name in ("e", "roundoff", "cross", "corr", "ratio", "descent", "bcos", "wnorm"):
                if f"{name}_{k}" in diag:
                    row[name] = diag[f"{name}_{k}"]
            rows.append(row)
            print(fmt(row, ["setting", "layer", "e", "roundoff", "cross", "update_norm", "bp_norm", "corr", "descent", "bcos"]))
    write_rows(args.out / "init.csv", rows, replace={(r["setting"],) for r in rows})


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


def sweep(args) -> None:
    import pytorch_lightning as pl

    from lightning_gait.data import CIFAR10DataModule
    from lightning_gait.targets import NonFiniteError

    settings = args.settings or list(SETTINGS[args.peer])
    probe_batch = load_cifar(args.data_dir, train=True, count=512)
    test = load_cifar(args.data_dir, train=False, count=10000)
    for setting in settings:
        pl.seed_everything(0, verbose=False)
        rule, text = build(args.peer, setting)
        datamodule = CIFAR10DataModule(data_dir=str(args.data_dir), download=False, batch_size=256, val_size=0,
                                       verify_checksums=False)
        callback = Probe(setting=setting, text=text, every=args.probe_every, steps=args.steps,
                         probe_batch=probe_batch, test=test, eval_images=args.eval_images)
        trainer = pl.Trainer(max_steps=args.steps, precision="64-true", accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, num_sanity_val_steps=0, callbacks=[callback])
        try:
            trainer.fit(rule, datamodule=datamodule)
        except NonFiniteError as err:
            callback.rows.append({"setting": setting, "budget": args.steps, "overrides": text, "step": trainer.global_step,
                                  "status": f"non-finite: {err}"})
        for row in callback.rows:
            row["budget"] = args.steps
        write_rows(args.out / f"{args.peer}.csv", callback.rows, replace={(setting, args.steps)},
                   key=("setting", "budget"))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR),
                        help=f"folder holding cifar-10-batches-py/ (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--out", type=Path, default=OUT)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe", help="single-batch diagnostics at initialisation")
    s = sub.add_parser("sweep", help="short training runs of one peer's settings")
    s.add_argument("peer", choices=PEERS)
    s.add_argument("--settings", nargs="*", help="names of SETTINGS[peer] (default: all)")
    s.add_argument("--steps", type=int, default=196, help="optimizer steps per setting (196 = one epoch)")
    s.add_argument("--probe-every", type=int, default=49)
    s.add_argument("--eval-images", type=int, default=2560, help="test images at intermediate probes")
    args = parser.parse_args(argv)
    if args.command == "probe":
        probe(args)
    else:
        sweep(args)


if __name__ == "__main__":
    torch.set_num_threads(1)  # the documented runs: one thread, beside other work
    main()
