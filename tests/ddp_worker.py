"""Worker of ``tests/test_ddp.py``: train small rules under Lightning's DDP and record every step.

Run as a script: ``python tests/ddp_worker.py OUT_DIR [--devices 2] [--strategy ddp]``.
Lightning's ``ddp`` launcher starts rank 1 by re-running this same command line
(``ddp_spawn`` forks the ranks from it instead). Every rank writes
``OUT_DIR/{scenario}_rank{r}.pt`` with what :class:`StepRecorder` saw: the weights when
training starts, the (all-reduced) gradients right before each optimizer step, weights
and buffers after each batch, the batches this rank trained on, the number of DDP
gradient all-reduces around each hook, the epoch metrics, and the exception if the fit
raised. ``tests/test_ddp.py`` compares the ranks with each other and with a one-process
run of the same scenario (``--devices 1``) whose batches are the union of the ranks'
batches.

Under ``ddp`` the ranks deliberately build their networks (and FA's feedback matrices)
from *different* seeds: only DDP's broadcast from rank 0 can make them agree.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Dict, List, Optional

import torch
import pytorch_lightning as pl
from torch.utils.data import DataLoader, TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lightning_gait import Backprop, FeedbackAlignment, GAITProp, InvertibleCNN, InvertibleMLP  # noqa: E402
from lightning_gait.callbacks import BPCorrelation, Orthogonality, TargetNorms  # noqa: E402

IN_FEATURES, WIDTH, DEPTH, NUM_CLASSES = 20, 16, 3, 4
#: the convolutional scenarios read the same 20 features as 5 x 2 x 2 images: a 3x3
#: convolution to 2 channels, a 2x2 patch convolution to 8 channels, a 1x1 convolution,
#: and a square dense output on the first 6 of its 8 channels
CONV_NET = dict(input_shape=(5, 2, 2), num_classes=NUM_CLASSES, channels=2, stages=1, patch=2, mixers=1, keep=6)
PER_RANK_BATCH = 8
STEPS = 4
WORLD = 2
#: one epoch of float64 data: exactly STEPS global batches
NUM_SAMPLES = STEPS * WORLD * PER_RANK_BATCH
#: ``seed_everything`` seed; Lightning seeds the DistributedSampler it installs with it
SEED = 0
#: scenarios with a bad sample put NaN into rank 1's batch at this step (0-based)
NAN_STEP = 1


@dataclass(frozen=True)
class Scenario:
    rule: str  # "gait" (paper form), "gait_exact" (difference form), "gait_cached" (+ cached inverse), "bp", "fa";
    # "conv_" before a rule: on the invertible CNN (CONV_NET) instead of the MLP
    loss_reduction: str
    diagnostics: bool = False  # BPCorrelation, TargetNorms, Orthogonality every step (rank 0 only)
    on_nonfinite: Optional[str] = None  # None: clean data; "skip"/"raise": NaN in one rank's batch


SCENARIOS: Dict[str, Scenario] = {
    "gait_norm_sum": Scenario("gait", "sum", diagnostics=True),
    "gait_norm_mean": Scenario("gait", "mean"),
    "gait_exact_norm_sum": Scenario("gait_exact", "sum", diagnostics=True),
    "gait_exact_norm_mean": Scenario("gait_exact", "mean"),
    # the cached inverse is per-rank state outside the parameters, touched by rank 0's diagnostics
    "gait_cached_norm_sum": Scenario("gait_cached", "sum", diagnostics=True),
    "bp_sum": Scenario("bp", "sum", diagnostics=True),
    "bp_mean": Scenario("bp", "mean"),
    "fa_sum": Scenario("fa", "sum"),
    "conv_gait_exact_norm_sum": Scenario("conv_gait_exact", "sum", diagnostics=True),
    "gait_exact_nan_skip": Scenario("gait_exact", "sum", on_nonfinite="skip"),
    "gait_exact_nan_raise": Scenario("gait_exact", "sum", on_nonfinite="raise"),
}

# ---------------------------------------------------------------------- DDP all-reduce counter
_ALLREDUCE_CALLS = [0]


def counting_allreduce_hook(state, bucket):
    """DDP's default gradient hook (average over ranks), counting how often it runs."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    _ALLREDUCE_CALLS[0] += 1
    return allreduce_hook(state, bucket)


def allreduce_calls() -> int:
    return _ALLREDUCE_CALLS[0]


# ---------------------------------------------------------------------- data and rules
def make_data(seed: int = 0, *, nan: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(NUM_SAMPLES, IN_FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (NUM_SAMPLES,), generator=g)
    if nan:
        # the first sample of rank 1's batch at NAN_STEP (see distributed_order)
        x[distributed_order()[1 + NAN_STEP * WORLD * PER_RANK_BATCH], 3] = float("nan")
    return x, y


def distributed_order(epoch: int = 0) -> torch.Tensor:
    """The order of Lightning's ``DistributedSampler(shuffle=True, seed=SEED)`` for one epoch.

    Rank ``r`` trains on ``order[r::WORLD]`` in chunks of ``PER_RANK_BATCH``, so global
    batch ``k`` (the union over ranks of their ``k``-th batches) is
    ``order[k * WORLD * PER_RANK_BATCH : (k + 1) * WORLD * PER_RANK_BATCH]``.
    """
    g = torch.Generator().manual_seed(SEED + epoch)
    return torch.randperm(NUM_SAMPLES, generator=g)


def make_rule(kind: str, loss_reduction: str, *, seed: int, on_nonfinite: str = "raise"):
    """A rule on a fresh small network whose weights (and FA's feedback) come from ``seed``."""
    torch.manual_seed(seed)
    common = dict(lr=1e-3, loss_reduction=loss_reduction, on_nonfinite=on_nonfinite)
    square = kind.startswith(("gait", "conv_gait"))
    if kind.startswith("conv_"):
        kind = kind[len("conv_"):]
        net = InvertibleCNN(**CONV_NET, square_output=square)
    else:
        net = InvertibleMLP(IN_FEATURES, WIDTH, DEPTH, NUM_CLASSES, square_output=square)
    if kind == "gait":
        return GAITProp(net, normalize=True, target_mode="absolute", ortho_weight=1.0, **common)
    if kind == "gait_exact":
        return GAITProp(net, normalize=True, target_mode="difference", ortho_weight=1.0, **common)
    if kind == "gait_cached":
        return GAITProp(net, normalize=True, target_mode="difference", inverse="cached", ortho_weight=1.0, **common)
    if kind == "bp":
        return Backprop(net, **common)
    if kind == "fa":
        return FeedbackAlignment(net, feedback_seed=seed, **common)
    raise ValueError(f"unknown rule kind {kind!r}")


def _clone(tensors) -> List[torch.Tensor]:
    return [t.detach().clone().cpu() for t in tensors]


class StepRecorder(pl.Callback):
    """Records one rank's view of training; every rank saves it at the end of the fit.

    Put it after the diagnostics callbacks: its ``on_train_batch_start`` then runs after
    theirs, so ``allreduce_at_start[k] - allreduce_at_end[k-1]`` counts the all-reduces
    that the diagnostics (and anything else outside the backward) caused.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.record: Dict[str, object] = {
            "grads": [], "weights": [], "buffers": [], "batches": [],
            "allreduce_at_start": [], "allreduce_before_step": [], "allreduce_at_end": [],
        }

    def setup(self, trainer, pl_module, stage) -> None:
        # the rank is known from here on, whatever the strategy
        self.path = Path(str(self.path).replace("{rank}", str(trainer.global_rank)))

    def on_train_start(self, trainer, pl_module) -> None:
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(trainer.strategy.model, DistributedDataParallel):
            # Lightning registers DDP comm hooks on CUDA only; on CPU we do it ourselves
            trainer.strategy.model.register_comm_hook(None, counting_allreduce_hook)
        self.record["initial_weights"] = _clone(pl_module.net.parameters())
        self.record["initial_buffers"] = {n: b.detach().clone() for n, b in pl_module.named_buffers()}
        self.record["world_size"] = trainer.world_size
        self.record["rank"] = trainer.global_rank
        self.record["model_wrapper"] = type(trainer.strategy.model).__name__
        self.record["sampler"] = type(getattr(trainer.train_dataloader, "sampler", None)).__name__
        self.record["allreduce_at_train_start"] = allreduce_calls()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record["allreduce_at_start"].append(allreduce_calls())
        self.record["batches"].append((batch[0].detach().clone(), batch[1].detach().clone()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.record["allreduce_before_step"].append(allreduce_calls())
        self.record["grads"].append(_clone(p.grad for p in pl_module.net.parameters()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["allreduce_at_end"].append(allreduce_calls())
        self.record["weights"].append(_clone(pl_module.net.parameters()))
        self.record["buffers"].append({n: b.detach().clone() for n, b in pl_module.named_buffers()})

    def _save(self, trainer, pl_module) -> None:
        self.record["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.record["skipped_batches"] = pl_module.skipped_batches
        self.record["diagnostics_measurements"] = {
            type(cb).__name__: len(cb.history)
            for cb in trainer.callbacks
            if isinstance(cb, (BPCorrelation, TargetNorms, Orthogonality))
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.path)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.record["exception"] = f"{type(exception).__name__}: {exception}"
        self._save(trainer, pl_module)


def run_scenario(name: str, out_dir: Path, *, devices: int, strategy: str) -> None:
    """Train scenario ``name`` for one epoch of ``STEPS`` batches; every rank saves its record.

    With ``devices=1`` one batch is the union of the ranks' batches (``WORLD * PER_RANK_BATCH``)
    and the diagnostics callbacks are off: the reference is a plain run.
    """
    sc = SCENARIOS[name]
    # under ``ddp`` this script runs once per rank; LOCAL_RANK is unset only on rank 0's first fit
    rank = int(os.environ.get("LOCAL_RANK", "0")) if devices > 1 else 0
    rule = make_rule(sc.rule, sc.loss_reduction, seed=100 + 1000 * rank, on_nonfinite=sc.on_nonfinite or "raise")
    pl.seed_everything(SEED, verbose=False)  # also the seed of the DistributedSampler Lightning installs
    data = TensorDataset(*make_data(nan=sc.on_nonfinite is not None))
    clean = TensorDataset(*make_data())
    callbacks: List[pl.Callback] = []
    if devices > 1:
        from pytorch_lightning.strategies import DDPStrategy

        # shuffle=True: Lightning swaps the sampler for a DistributedSampler(seed=SEED)
        train = DataLoader(data, batch_size=PER_RANK_BATCH, shuffle=True)
        val = DataLoader(clean, batch_size=PER_RANK_BATCH, shuffle=False)
        strategy_obj = DDPStrategy(
            start_method="spawn" if strategy == "ddp_spawn" else "popen",
            process_group_backend="gloo",
            timeout=timedelta(seconds=60),  # a mismatched collective fails instead of hanging
        )
        if sc.diagnostics:
            # every step, rank 0 alone calls torch.autograd.grad on the DDP-registered parameters
            callbacks += [
                BPCorrelation(every_n_steps=1, at_init=True, init_networks=2, charts=False),
                TargetNorms(every_n_steps=1, charts=False),
                Orthogonality(every_n_steps=1, charts=False),
            ]
    else:
        train = DataLoader(data, batch_size=WORLD * PER_RANK_BATCH, sampler=distributed_order().tolist())
        val = DataLoader(clean, batch_size=WORLD * PER_RANK_BATCH, shuffle=False)
        strategy_obj = "auto"
    callbacks.append(StepRecorder(out_dir / f"{name}_rank{{rank}}.pt"))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy_obj,
        precision="64-true",
        max_steps=STEPS,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    try:
        trainer.fit(rule, train_dataloaders=train, val_dataloaders=val)
    except FloatingPointError:  # NonFiniteError: recorded by StepRecorder.on_exception
        if sc.on_nonfinite != "raise":
            raise


def run_datamodule(cifar_dir: Path, out_dir: Path) -> None:
    """Two epochs of Backprop on CIFAR-10 files through :class:`CIFAR10DataModule` under DDP,
    with random crops and flips.

    Each rank saves ``datamodule_rank{r}.pt`` (the batches it trained on, as uint8 rows
    recovered from the float64 inputs, and the sampler Lightning installed).
    """
    from lightning_gait.data import CIFAR10DataModule

    from pytorch_lightning.strategies import DDPStrategy

    pl.seed_everything(SEED, verbose=False)
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), download=False, verify_checksums=False,
                           val_size=64, batch_size=32, shuffle_seed=7, crop_padding=2, flip=True)
    torch.manual_seed(0)
    rule = Backprop(InvertibleMLP(3 * 32 * 32, 16, 2, 10, square_output=False))
    recorder = StepRecorder(out_dir / "datamodule_rank{rank}.pt")
    trainer = pl.Trainer(
        accelerator="cpu", devices=WORLD,
        strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60)),
        precision="64-true", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    trainer.fit(rule, datamodule=dm)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--devices", type=int, default=WORLD)
    parser.add_argument("--strategy", default="ddp", choices=["ddp", "ddp_spawn"])
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--cifar-dir", type=Path, default=None,
                        help="also run the CIFAR10DataModule scenario on the CIFAR-10 files there")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")
    for name in args.scenarios:
        run_scenario(name, args.out_dir, devices=args.devices, strategy=args.strategy)
    if args.cifar_dir is not None:
        run_datamodule(args.cifar_dir, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
