"""What the benchmark times: its variants (config stacks, ``benchmarks/variants.yaml``) and one variant's step.

Every variant is built by :func:`experiments.common.build_regime`, the path ``fit`` takes,
on the same square-output network (``square_output=True`` for backprop too), so that the
variants of one width and depth start from the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from experiments.common import build_regime, label, net_args, stack_args
from lightning_gait.data import CIFAR10DataModule
from lightning_gait.networks import orthogonality_surrogate

__all__ = ["Variant", "VARIANTS", "VARIANTS_FILE", "load_variants", "FULL_VARIANTS", "SWEEP_VARIANTS", "QUICK_VARIANTS", "LIGHTNING_VARIANTS",
           "StepRunner", "sync", "same_batch_loader", "make_trainer"]

#: the variants, as config stacks, and the sets of them each command times
VARIANTS_FILE = Path(__file__).resolve().with_name("variants.yaml")


@dataclass(frozen=True)
class Variant:
    """One timed rule: a config stack (a regime of ``conf/``, then files of ``conf/variants/``),
    its label suffix and its baseline (the variant its ratio divides by)."""

    name: str
    stack: Tuple[str, ...]
    suffix: str = ""  # what the label adds to the regime's figure label
    baseline: str = "backprop"

    @property
    def regime(self) -> str:
        """The stack's first config: the regime."""
        return self.stack[0]

    @property
    def overrides(self) -> Tuple[str, ...]:
        """The rest of the stack, as ``fit`` arguments (``--config variants/difference ...``)."""
        return tuple(stack_args(self.stack[1:]))

    @property
    def label(self) -> str:
        return label(self.regime) + self.suffix


def load_variants(group: str, path: Path = VARIANTS_FILE) -> Tuple[Dict[str, Variant], Dict[str, List[str]]]:
    """``(variants by name, sets by name)`` of ``group`` (``mlp`` or ``conv``) in ``path``."""
    spec = yaml.safe_load(path.read_text())[group]
    variants = {name: Variant(name, tuple(v["stack"]), v.get("suffix", ""), v.get("baseline", spec["baseline"]))
                for name, v in spec["variants"].items()}
    sets = {name: list(names) for name, names in spec.get("sets", {}).items()}
    unknown = sorted({n for names in sets.values() for n in names} - set(variants))
    if unknown:
        raise ValueError(f"{path}: {group} sets name variants it does not define: {unknown}")
    return variants, sets


VARIANTS, _SETS = load_variants("mlp")
#: what the full benchmark times at the acceptance setting, and on the sweeps
FULL_VARIANTS = list(VARIANTS)
SWEEP_VARIANTS = _SETS["sweep"]
QUICK_VARIANTS = _SETS["quick"]
LIGHTNING_VARIANTS = _SETS["lightning"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepRunner:
    """One variant's rule, optimizer and batch; :meth:`step` is the timed step.

    The rule is built under ``seed`` (the network ``fit --seed_everything seed`` starts
    from) with ``width`` and ``depth`` (``None``: the config's, e.g. for a network without them); ``in_features`` and ``num_classes`` replace the
    data's sizes only when given (the data class is then a plain ``LightningDataModule``,
    which sets no sizes: the benchmark feeds its own batch). The batch is uniform noise
    (shaped as the network's ``input_shape`` when it has one) and random labels.
    """

    def __init__(self, variant: Variant, *, width: Optional[int], depth: Optional[int], batch: int,
                 dtype: torch.dtype, device: torch.device, seed: int, in_features: Optional[int] = None,
                 num_classes: Optional[int] = None) -> None:
        self.variant = variant
        self.device = device
        sizes = []
        if in_features is not None or num_classes is not None:  # the other size: the default data's
            sizes = net_args(in_features=in_features or CIFAR10DataModule.input_size,
                             num_classes=num_classes or CIFAR10DataModule.num_classes)
        data = ["--data.class_path", "pytorch_lightning.LightningDataModule"] if sizes else []
        self.rule = build_regime(variant.regime, *variant.overrides, *data,
                                 *net_args(width=width, depth=depth), *sizes, seed=seed)  # None: the config's
        self.rule.to(device=device, dtype=dtype)
        self.net = self.rule.net
        self.optimizer = self.rule.configure_optimizers()
        generator = torch.Generator().manual_seed(seed + 1)
        shape = getattr(self.net, "input_shape", None) or (self.net.in_features,)
        self.x = torch.rand(batch, *shape, generator=generator, dtype=dtype).to(device)
        self.y = torch.randint(0, self.net.num_classes, (batch,), generator=generator).to(device)
        self.failed: Optional[str] = None

    @property
    def ortho_weight(self) -> float:
        return self.rule.ortho_weight if self.net.square_layer_indices else 0.0

    def install_gradients(self) -> None:
        """The update ``training_step`` computes, into ``.grad``: the rule's ``local_gradients``
        plus the gradient of the orthogonality surrogate (when ``ortho_weight > 0``)."""
        self.optimizer.zero_grad(set_to_none=True)
        for (gw, gb), (weight, bias) in zip(self.rule.local_gradients(self.x, self.y), self.net.layer_parameters()):
            weight.grad = gw
            if bias is not None:
                bias.grad = gb
        if self.ortho_weight > 0:
            surrogate, _ = orthogonality_surrogate(self.net)
            (self.ortho_weight * surrogate).backward()  # adds to the installed .grad

    def step(self) -> None:
        """:meth:`install_gradients`, then one step of the rule's optimizer."""
        self.install_gradients()
        self.optimizer.step()

    def state_bytes(self) -> int:
        total = sum(p.numel() * p.element_size() for p in self.net.parameters())
        for state in self.optimizer.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, Tensor))
        strategy = getattr(self.rule, "inverse_strategy", None)
        if hasattr(strategy, "state_bytes"):
            total += strategy.state_bytes()
        return total


class _SameBatch(Dataset):
    def __init__(self, x: Tensor, y: Tensor, n: int) -> None:
        self.x, self.y, self.n = x, y, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.x, self.y


def same_batch_loader(runner: StepRunner, steps: int) -> DataLoader:
    """``steps`` copies of the runner's batch, for a Trainer."""
    return DataLoader(_SameBatch(runner.x.cpu(), runner.y.cpu(), steps), batch_size=None, shuffle=False)


def make_trainer(device: torch.device, dtype: torch.dtype, steps: int, callbacks: List):
    """A bare Trainer for ``steps`` training steps in ``dtype`` (no logger, checkpoints or validation)."""
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=steps, max_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
        precision="64-true" if dtype == torch.float64 else "32-true", callbacks=callbacks,
    )
