"""The optimizer of a rule and the dtype of a restored checkpoint: plumbing apart from the loop.

:class:`AdamOptimizer` is a mixin of :class:`~lightning_gait.rules.base.LocalLearningRule`:
Adam over the network's parameters, fused where PyTorch's fused kernel runs, and the
same implementation after a resume whichever one wrote the checkpoint; a checkpoint's
floating dtype taken before its weights are copied in, so that a float64 run resumes
exactly. It reads ``net`` from the rule and Lightning's ``trainer``.

A resume takes the optimizer's settings from the configuration it is started with, not
from the checkpoint: ``Optimizer.load_state_dict`` would otherwise bring back the
checkpoint's ``lr``, ``betas`` and ``eps`` with its moment estimates, and a new
``--model.init_args.lr`` would be recorded but ignored. Every setting that differs from
the checkpoint's run is said in one line (:meth:`AdamOptimizer._apply_resumed_settings`).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

__all__ = ["AdamOptimizer"]


def _fused_adam_devices() -> set:
    """Device types PyTorch's fused Adam supports (``cpu`` and ``cuda`` if it cannot tell)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return set(_get_fused_kernels_supported_devices())
    except (ImportError, AttributeError):  # a private helper: fall back where it moved
        return {"cpu", "cuda"}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def changed_settings(before: Optional[Mapping[str, Any]], now: Mapping[str, Any],
                     prefix: str = "") -> Dict[str, Tuple[Any, Any]]:
    """``{name: (checkpoint's value, this run's value)}`` for the hyperparameters that differ; a
    setting inside a nested one (the network's) is named by its path, ``net.init_args.alpha``."""
    out: Dict[str, Tuple[Any, Any]] = {}
    for key, value in now.items():
        if not before or key not in before:
            continue
        name = f"{prefix}{key}"
        if isinstance(before[key], Mapping) and isinstance(value, Mapping):
            out.update(changed_settings(before[key], value, f"{name}."))
        elif not _same(before[key], value):
            out[name] = (before[key], value)
    return out


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(list(value) if isinstance(value, tuple) else value)


class AdamOptimizer:
    """Adam's hyperparameters, :meth:`configure_optimizers` and the dtype, Adam
    implementation and settings of a restored checkpoint (a mixin)."""

    #: the rule's hyperparameters that are settings of Adam's parameter groups
    OPTIMIZER_SETTINGS = {"lr": "lr", "betas": "betas", "adam_eps": "eps"}

    def _init_optimizer(self, lr: float, betas: Tuple[float, float], adam_eps: float,
                        fused_adam: Optional[bool]) -> None:
        """Check and keep Adam's hyperparameters and the choice of implementation."""
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if adam_eps <= 0:
            raise ValueError(f"adam_eps must be positive, got {adam_eps}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if fused_adam not in (None, True, False):
            raise ValueError(f"fused_adam must be None (automatic), True or False, got {fused_adam!r}")
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps = float(adam_eps)
        self.fused_adam = fused_adam

    def configure_optimizers(self):
        """Adam over the network's parameters (fused where available, see ``fused_adam``).

        Lightning calls this after moving the module to its device and dtype.
        """
        params = list(self.net.parameters())
        supported = _fused_adam_devices()
        unfusable = sorted({f"{p.device.type}/{p.dtype}" for p in params
                            if not (p.is_floating_point() and p.device.type in supported)})
        if self.fused_adam and unfusable:
            raise ValueError(
                f"fused_adam=True, but PyTorch's fused Adam does not support parameters on {unfusable} "
                f"(supported devices: {sorted(supported)}, floating dtypes); use fused_adam=None "
                "(fused where possible) or fused_adam=False"
            )
        fused = not unfusable if self.fused_adam is None else self.fused_adam
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.adam_eps, fused=fused or None)

    def _apply_adam_implementation(self) -> None:
        """Make restored optimizers use the Adam implementation they were built with.

        ``Optimizer.load_state_dict`` (Lightning's resume) restores each parameter group's
        ``fused``/``foreach`` flags from the checkpoint, so a checkpoint written with the
        other implementation would otherwise decide it; the optimizer's ``defaults`` keep
        the choice of :meth:`configure_optimizers`.
        """
        if self._trainer is None:
            return
        for optimizer in self.trainer.optimizers:
            if not isinstance(optimizer, torch.optim.Adam):
                continue
            fused = optimizer.defaults.get("fused")
            for group in optimizer.param_groups:
                group["fused"], group["foreach"] = fused, optimizer.defaults.get("foreach")
                if not fused:
                    continue
                for p in group["params"]:
                    state = optimizer.state.get(p, {})
                    step = state.get("step")
                    if isinstance(step, Tensor) and (step.device != p.device or step.dtype != torch.float32):
                        state["step"] = step.to(device=p.device, dtype=torch.float32)

    def on_load_checkpoint(self, checkpoint) -> None:
        """Take the checkpoint's floating dtype before its weights are copied in.

        Lightning restores weights before the precision plugin converts the module, so a
        float64 (``64-true``) checkpoint would otherwise pass through the float32 network
        the CLI built and lose its low bits; resuming would then not be exact.
        """
        self._resumed_settings = changed_settings(checkpoint.get("hyper_parameters"), self.hparams)
        dtypes = {v.dtype for v in checkpoint.get("state_dict", {}).values() if v.is_floating_point()}
        if len(dtypes) == 1:
            dtype = dtypes.pop()
            if next(self.net.parameters()).dtype != dtype:
                self.to(dtype)

    def _apply_resumed_settings(self) -> None:
        """After a resume, give the restored optimizers this configuration's settings and say
        which settings differ from the checkpoint's run (called at the start of training)."""
        changed = getattr(self, "_resumed_settings", None)
        self._resumed_settings = {}
        if not changed or self._trainer is None:
            return
        for name, group_key in self.OPTIMIZER_SETTINGS.items():
            if name in changed:
                for optimizer in self.trainer.optimizers:
                    for group in optimizer.param_groups:
                        group[group_key] = tuple(changed[name][1]) if group_key == "betas" else changed[name][1]
        parts = [f"{name} {_shown(old)} -> {_shown(new)}" for name, (old, new) in changed.items()]
        rank_zero_info(f"Resumed with settings other than the checkpoint's run: {', '.join(parts)}; they apply from "
                       f"global step {self.trainer.global_step} (Adam's moment estimates are the checkpoint's)")
