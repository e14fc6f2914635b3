"""``python -m experiments.training``: the paper's Fig. 2A, test accuracy over training.

Trains every regime (BP, BP-S, GAIT, GAIT-N, GAIT-S, GAIT-SN, FA, TP) as its config in
``conf/`` describes it (float64, batch 256, Adam; see ``docs/gait-prop.md``, "Reference
hyperparameters") on CIFAR-10: the rule and the
:class:`~lightning_gait.data.CIFAR10DataModule` come from fit's own parser
(:func:`~experiments.common.regime_cli`, with ``--data.val_size 0``, so that Lightning's
validation loop evaluates the test set, as the reference code did), and a
``pytorch_lightning.Trainer`` in the config's precision runs them. Every regime gets the
same number of epochs and the same seed (``--seed_everything``: the same initial
weights wherever the architectures agree, and the same data order).

Writes, into ``--out`` (an experiment's results folder; default ``outputs/fig2a``, so that a
trial run never overwrites the committed ``results/fig2a``):

* ``{regime}_s{seed}/metrics.csv``: one row per evaluation of the test set: ``epoch`` (a
  fraction with ``--evals-per-epoch`` > 1; 0 is the untrained network), ``step``,
  ``train_loss`` / ``train_acc`` (mean over the training batches since the previous
  evaluation), ``test_loss`` / ``test_acc``, ``train_time_s`` (wall time of those
  training batches), ``eval_time_s``; written after every evaluation, so an
  interrupted run keeps what it did;
* ``{regime}_s{seed}/config.yaml``: the resolved configuration of the run (what
  ``python -m lightning_gait.fit`` prints for :func:`config_args`: the regime's config, the
  seed, ``val_size 0``, the epochs and evaluation interval), from which ``fit --config`` trains
  the same rule on the same data order;
* ``summary.csv``: per regime, the final and best test accuracy, epochs, seed, dtype, seconds
  per training epoch, status;
* ``fig2a_training.png``: test accuracy against epoch, one line per regime (not with
  ``--track-alignment``).

The README's 20-epoch run and the paper's full run (200 epochs) on a GPU::

    python -m experiments.training --data-dir ../shared/data --epochs 20 --evals-per-epoch 2 --out results/fig2a
    python -m experiments.training --data-dir ../shared/data --epochs 200 --accelerator gpu --out outputs/fig2a_200

``--plot-only`` redraws the figure from the CSVs already in ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .common import DEFAULT_DATA_DIR, REGIMES, check_data_dir, close_figure, data_args, label, regime_cli, resolved_config

__all__ = ["EvaluationRecorder", "train_regime", "config_args", "run", "read_runs", "summarize_runs", "plot_training",
           "main"]

#: the order regimes are trained in: the paper's comparison first, references last
DEFAULT_ORDER = ("bp", "gait_norm", "gait", "gait_smooth_norm", "gait_smooth", "bp_smooth", "fa", "tp")

RUN_COLUMNS = ("regime", "epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc",
               "train_time_s", "eval_time_s", "dtype", "seed")
SUMMARY_COLUMNS = ("regime", "label", "epochs", "seed", "dtype", "final_test_acc", "best_test_acc",
                   "best_epoch", "train_s_per_epoch", "status")


def _import_pl():
    import pytorch_lightning as pl

    return pl


class EvaluationRecorder:
    """A Lightning callback that writes one CSV row per test-set evaluation.

    Training loss and accuracy are the means over the batches trained since the previous
    evaluation (the rule returns the per-sample loss from ``training_step`` and logs
    ``train/acc_step``). The evaluation's ``val/loss``, ``val/acc`` are the test set's
    (``val_size=0``). Built lazily so that importing this module needs no Lightning.
    """

    def __new__(cls, *args, **kwargs):
        pl = _import_pl()

        class _Recorder(pl.Callback):
            def __init__(self, path: Path, *, regime: str, seed: int, batches_per_epoch: int,
                         track_batch: Optional[tuple] = None) -> None:
                self.path = Path(path)
                self.track_batch = track_batch
                self.columns = list(RUN_COLUMNS)
                self.regime = regime
                self.seed = seed
                self.batches_per_epoch = max(int(batches_per_epoch), 1)
                self.rows: List[Dict[str, object]] = []
                self._reset_window()
                self._eval_start = 0.0
                self._batch_start = 0.0
                self.batches_done = 0

            def _reset_window(self) -> None:
                self._loss_sum = 0.0
                self._correct = 0.0
                self._seen = 0
                self._train_time = 0.0

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                self._batch_start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                self._train_time += time.perf_counter() - self._batch_start
                self.batches_done += 1
                n = len(batch[1])
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                acc = trainer.callback_metrics.get("train/acc_step")
                if loss is None or acc is None:  # a skipped batch
                    return
                self._loss_sum += float(loss) * n
                self._correct += float(acc) * n
                self._seen += n

            def on_validation_start(self, trainer, pl_module) -> None:
                self._eval_start = time.perf_counter()

            def on_validation_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking:
                    return
                metrics = trainer.callback_metrics
                dtype = str(next(pl_module.parameters()).dtype).replace("torch.", "")
                self.rows.append({
                    "regime": self.regime,
                    "epoch": round(self.batches_done / self.batches_per_epoch, 6),
                    "step": int(trainer.global_step),
                    "train_loss": self._loss_sum / self._seen if self._seen else math.nan,
                    "train_acc": self._correct / self._seen if self._seen else math.nan,
                    "test_loss": float(metrics["val/loss"]),
                    "test_acc": float(metrics["val/acc"]),
                    "train_time_s": self._train_time,
                    "eval_time_s": time.perf_counter() - self._eval_start,
                    "dtype": dtype,
                    "seed": self.seed,
                })
                if self.track_batch is not None:
                    self.rows[-1].update(self._alignment(trainer, pl_module))
                self._reset_window()
                write_rows(self.path, self.rows, self.columns)

            def _alignment(self, trainer, pl_module) -> Dict[str, float]:
                """``ortho_dev`` (mean over square layers) and ``bp_corr_layer_{k}`` on the fixed batch."""
                from lightning_gait.diagnostics import orthogonality_metrics, rule_alignment

                images, labels = self.track_batch
                param = next(pl_module.parameters())
                # Lightning evaluates under inference mode; the rule's update needs autograd
                with torch.inference_mode(False), torch.enable_grad():
                    x = trainer.datamodule.preprocess(images.to(param.device), param.dtype)
                    alignment = rule_alignment(pl_module, x, labels.to(param.device))
                ortho = orthogonality_metrics(pl_module.net, condition=False)
                out = {"ortho_dev": statistics.fmean(ortho.values()) if ortho else math.nan}
                for name, value in alignment.items():
                    if name.startswith("bp_corr/"):
                        out["bp_corr_" + name.split("/", 1)[1]] = value
                for key in out:
                    if key not in self.columns:
                        self.columns.append(key)
                return out

        return _Recorder(*args, **kwargs)


def write_rows(path: Path, rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _fmt(row.get(key, "")) for key in columns})
    tmp.replace(path)


def _fmt(value):
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.10g}"
    return value


def config_args(regime: str, *, data_dir, seed: int, epochs: int, val_check_interval, precision: Optional[str] = None,
                accelerator: str = "cpu", limit_train_batches: Optional[int] = None,
                limit_val_batches: Optional[int] = None, verify_checksums: bool = True) -> List[str]:
    """The ``fit`` arguments whose resolved configuration is what :func:`train_regime` trains: the
    regime's config with its data, seed and Trainer settings (no logger, checkpoints or callbacks: the
    recorder is this module's own)."""
    args = ["--config", regime, "--seed_everything", str(seed),
            *data_args(data_dir=data_dir, download=False, val_size=0, shuffle_seed=seed, verify_checksums=verify_checksums),
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
            "--trainer.max_epochs", str(epochs), "--trainer.accelerator", accelerator,
            "--trainer.val_check_interval", str(val_check_interval), "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    if precision is not None:
        args += ["--trainer.precision", str(precision)]
    for key, value in (("limit_train_batches", limit_train_batches), ("limit_val_batches", limit_val_batches)):
        if value is not None:
            args += [f"--trainer.{key}", str(value)]
    return args


def train_regime(
    regime: str,
    *,
    data_dir: Path,
    out: Path,
    epochs: int,
    seed: int = 0,
    evals_per_epoch: int = 1,
    accelerator: str = "cpu",
    precision: Optional[str] = None,
    limit_train_batches: Optional[int] = None,
    limit_val_batches: Optional[int] = None,
    verify_checksums: bool = True,
    track_alignment: bool = False,
) -> Dict[str, object]:
    """Train one regime; write ``out/{regime}_s{seed}/metrics.csv`` and its ``config.yaml``; return
    its summary row.

    With ``track_alignment``, every evaluation also records the mean orthogonality
    deviation ``||W W^T - I||_F / sqrt(n)`` of the square layers (``ortho_dev``) and the
    per-layer correlation of the rule's update with backprop's (``bp_corr_layer_{k}``,
    :func:`lightning_gait.diagnostics.rule_alignment`) on one fixed batch: the first
    ``batch_size`` images of the training set.
    """
    pl = _import_pl()
    from lightning_gait.targets import NonFiniteError

    cli = regime_cli(regime, *data_args(data_dir=data_dir, download=False, val_size=0, shuffle_seed=seed,
                                        verify_checksums=verify_checksums), seed=seed)
    rule, datamodule = cli.model, cli.datamodule
    precision = precision or str(cli.trainer.precision)
    datamodule.setup("fit")
    full_epoch = math.ceil(len(datamodule.data_train) / datamodule.batch_size)
    batches_per_epoch = full_epoch if limit_train_batches is None else min(full_epoch, int(limit_train_batches))
    # the epoch column counts full passes over the training set, also when an epoch is cut short
    track_batch = None
    if track_alignment:
        n = datamodule.batch_size
        track_batch = (datamodule.data_train.images[:n], datamodule.data_train.labels[:n])
    run_dir = out / f"{regime}_s{seed}"
    recorder = EvaluationRecorder(run_dir / "metrics.csv", regime=regime, seed=seed,
                                  batches_per_epoch=full_epoch, track_batch=track_batch)
    interval = 1.0 if evals_per_epoch <= 1 else max(1, batches_per_epoch // evals_per_epoch)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(resolved_config(config_args(
        regime, data_dir=data_dir, seed=seed, epochs=epochs, val_check_interval=interval, precision=precision,
        accelerator=accelerator, limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
        verify_checksums=verify_checksums)))
    trainer = pl.Trainer(
        max_epochs=epochs,
        precision=precision,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder],
        val_check_interval=interval,
        limit_train_batches=limit_train_batches,
        limit_val_batches=limit_val_batches,
        deterministic=False,
    )
    status = "ok"
    start = time.perf_counter()
    try:
        trainer.validate(rule, datamodule=datamodule, verbose=False)  # epoch 0: the untrained network
        trainer.fit(rule, datamodule=datamodule)
    except NonFiniteError as err:
        status = f"non-finite: {err}"
    wall = time.perf_counter() - start
    rows = recorder.rows
    train_time = sum(float(r["train_time_s"]) for r in rows)
    epochs_done = recorder.batches_done / full_epoch
    summary = summarize_rows(regime, rows)
    summary.update({
        "seed": seed,
        "train_s_per_epoch": train_time / epochs_done if epochs_done else math.nan,
        "status": status,
    })
    print(f"[{regime}] {status}; {epochs_done:.2f} epochs in {wall:.0f} s; final test acc "
          f"{summary['final_test_acc']:.4f}, best {summary['best_test_acc']:.4f}", flush=True)
    return summary


def merge_summary(path: Path, summary: Dict[str, object]) -> None:
    """Insert or replace ``summary``'s regime in the summary CSV (other regimes' rows kept).

    Lets several processes, each training some of the regimes, share one summary file.
    """
    rows: Dict[str, Dict[str, object]] = {}
    if path.is_file():
        with open(path, newline="") as f:
            rows = {row["regime"]: row for row in csv.DictReader(f)}
    rows[str(summary["regime"])] = summary
    write_rows(path, [rows[r] for r in _ordered(rows)], SUMMARY_COLUMNS)


def summarize_rows(regime: str, rows: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """Final and best test accuracy (and its epoch) of one run's rows (untrained row included)."""
    trained = [r for r in rows if float(r["epoch"]) > 0] or list(rows)
    if not trained:
        return {"regime": regime, "label": label(regime), "epochs": 0, "dtype": "", "final_test_acc": math.nan,
                "best_test_acc": math.nan, "best_epoch": math.nan}
    best = max(trained, key=lambda r: float(r["test_acc"]))
    last = trained[-1]
    return {
        "regime": regime,
        "label": label(regime),
        "epochs": float(last["epoch"]),
        "dtype": last["dtype"],
        "final_test_acc": float(last["test_acc"]),
        "best_test_acc": float(best["test_acc"]),
        "best_epoch": float(best["epoch"]),
    }


def read_runs(folder: Path) -> Dict[str, List[Dict[str, str]]]:
    """``regime -> rows`` of every ``{regime}_s{seed}/metrics.csv`` in ``folder`` (the lowest seed of a
    regime trained with several)."""
    runs = {}
    for path in sorted(Path(folder).glob("*_s*/metrics.csv"), key=lambda p: p.parent.name):
        regime, _, seed = path.parent.name.rpartition("_s")
        if not seed.isdigit() or regime in runs:
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            runs[regime] = rows
    return runs


def summarize_runs(runs: Dict[str, List[Dict[str, str]]]) -> List[Dict[str, object]]:
    out = []
    for regime in _ordered(runs):
        summary = summarize_rows(regime, runs[regime])
        summary["seed"] = runs[regime][-1].get("seed", "")
        out.append(summary)
    return out


def _ordered(regimes) -> List[str]:
    known = [r for r in DEFAULT_ORDER if r in regimes]
    return known + sorted(r for r in regimes if r not in known)


#: line styles: one colour family per rule, dashed for the smoothed activation
STYLES = {
    "bp": dict(color="black", linestyle="-"),
    "bp_smooth": dict(color="black", linestyle="--"),
    "gait": dict(color="tab:red", linestyle="-"),
    "gait_smooth": dict(color="tab:red", linestyle="--"),
    "gait_norm": dict(color="tab:blue", linestyle="-"),
    "gait_smooth_norm": dict(color="tab:blue", linestyle="--"),
    "fa": dict(color="tab:green", linestyle=":"),
    "tp": dict(color="tab:purple", linestyle=":"),
}


def plot_training(runs: Dict[str, List[Dict[str, str]]], path: Optional[Path] = None, *, title: str = ""):
    """Test accuracy against epoch, one line per regime (the paper's Fig. 2A). Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for regime in _ordered(runs):
        rows = runs[regime]
        x = [float(r["epoch"]) for r in rows]
        y = [100.0 * float(r["test_acc"]) for r in rows]
        name = label(regime) if regime in REGIMES else regime
        ax.plot(x, y, marker="o", markersize=3, label=name, **STYLES.get(regime, {}))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    if not title:
        budget = max(float(rows[-1]["epoch"]) for rows in runs.values())
        seeds = sorted({str(rows[-1].get("seed", "")) for rows in runs.values()})
        title = f"CIFAR-10 test accuracy (float64), {budget:.3g} epoch(s), seed {', '.join(seeds)}"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def run(
    *,
    regimes: Sequence[str],
    data_dir: Path,
    out: Path,
    epochs: int,
    seed: int = 0,
    evals_per_epoch: int = 1,
    accelerator: str = "cpu",
    precision: Optional[str] = None,
    limit_train_batches: Optional[int] = None,
    limit_val_batches: Optional[int] = None,
    verify_checksums: bool = True,
    track_alignment: bool = False,
) -> List[Dict[str, object]]:
    """Train each regime in turn, then write ``out/summary.csv`` and, unless ``track_alignment``,
    ``out/fig2a_training.png``."""
    summaries = []
    for regime in regimes:
        summaries.append(train_regime(
            regime, data_dir=data_dir, out=out, epochs=epochs, seed=seed, evals_per_epoch=evals_per_epoch,
            accelerator=accelerator, precision=precision, limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches, verify_checksums=verify_checksums,
            track_alignment=track_alignment,
        ))
        merge_summary(out / "summary.csv", summaries[-1])
    if track_alignment:
        return summaries
    runs = read_runs(out)  # every regime in the folder, also those trained elsewhere
    close_figure(plot_training(runs, out / "fig2a_training.png"))
    return summaries


def _parse_regimes(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(DEFAULT_ORDER)
    unknown = [n for n in names if n not in REGIMES]
    if unknown or not names:
        raise ValueError(f"--regimes: unknown {unknown or text!r}; choose from {', '.join(DEFAULT_ORDER)} or 'all'")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.training",
        description="Fig. 2A: train every regime on CIFAR-10 and plot test accuracy against epoch.",
        epilog="Full paper run on a GPU: --epochs 200 --accelerator gpu",
    )
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="folder holding cifar-10-batches-py/ (as the CLI's --data.data_dir)")
    parser.add_argument("--out", default="outputs/fig2a",
                        help="the experiment's folder: OUT/{regime}_s{seed}/metrics.csv and config.yaml, summary and PNG "
                             "in OUT (the committed 20-epoch run: results/fig2a)")
    parser.add_argument("--regimes", default="all", help=f"comma-separated, from: {', '.join(DEFAULT_ORDER)}")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per regime (the paper: 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evals-per-epoch", type=int, default=1, help="test-set evaluations per epoch")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu, gpu, auto")
    parser.add_argument("--precision", default=None, help="override the configs' precision (64-true)")
    parser.add_argument("--limit-train-batches", type=int, default=None, help="training batches per epoch")
    parser.add_argument("--limit-val-batches", type=int, default=None, help="test batches per evaluation")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-verify-checksums", action="store_true", help="for generated (test) datasets")
    parser.add_argument("--track-alignment", action="store_true",
                        help="also record ortho_dev and per-layer bp_corr at each evaluation (see train_regime; "
                             "the committed run: --out results/training_alignment)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4 training batches per epoch, 2 test batches")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the CSVs in --out")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        regimes = _parse_regimes(args.regimes)
        if args.plot_only:
            runs = read_runs(out)
            if args.regimes != "all":
                runs = {r: rows for r, rows in runs.items() if r in regimes}
            if not runs:
                raise ValueError(f"--plot-only: no run CSVs under {out}/*_s*/")
            close_figure(plot_training(runs, out / "fig2a_training.png"))
            return 0
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        if args.evals_per_epoch < 1:
            raise ValueError(f"--evals-per-epoch must be >= 1, got {args.evals_per_epoch}")
        data_dir = check_data_dir(args.data_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    limit_train, limit_val = args.limit_train_batches, args.limit_val_batches
    if args.quick:
        limit_train, limit_val = limit_train or 4, limit_val or 2
    summaries = run(
        regimes=regimes, data_dir=data_dir, out=out, epochs=args.epochs, seed=args.seed,
        evals_per_epoch=args.evals_per_epoch, accelerator=args.accelerator, precision=args.precision,
        limit_train_batches=limit_train, limit_val_batches=limit_val,
        verify_checksums=not args.no_verify_checksums, track_alignment=args.track_alignment,
    )
    for s in summaries:
        print(f"{s['label']:8s} final {100 * s['final_test_acc']:.2f}%  best {100 * s['best_test_acc']:.2f}% "
              f"(epoch {s['best_epoch']})  {s['train_s_per_epoch']:.0f} s/epoch  {s['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
