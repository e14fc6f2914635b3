"""Diagnostics of a learning rule, as plain PyTorch functions (no Lightning).

What a GAIT-prop researcher watches while training, each computed in float64 whatever
the training dtype (the inputs are converted, never the network):

* alignment with backprop (``docs/gait-prop.md``, "The correlation metric"): per layer,
  the rule's weight update ``g`` and backprop's gradient ``g_bp`` of the same loss, on
  the same network and batch, flattened (biases excluded):

  - Pearson correlation ``r = <g - mean(g), g_bp - mean(g_bp)> / (||g - mean(g)|| ||g_bp - mean(g_bp)||)``,
  - cosine similarity ``c = <g, g_bp> / (||g|| ||g_bp||)``,
  - angle ``arccos(c)`` in degrees,
  - norm ratio ``||g|| / ||g_bp||`` (1 when the update has backprop's magnitude);

  ``r`` and ``c`` are clamped to ``[-1, 1]`` (round-off may put them a few ulps outside);
  a NaN stays NaN (a zero gradient has no direction) and is reported with a warning;
* target statistics of a :class:`~lightning_gait.targets.TargetTrace`: the batch mean of
  ``||t_l - a_l||_2``, the per-sample gamma actually used (mean, min, max), and the
  per-sample multiplier ``m_l`` in log10 (mean, min, max);
* orthogonality of each square layer: ``||W W^T - I||_F / sqrt(n)`` (0 for an orthogonal
  matrix) and the 2-norm condition number ``sigma_max / sigma_min`` (1 for an orthogonal
  matrix).

Metric names are the ones logged by :mod:`lightning_gait.callbacks`; layers are counted
from 1 at the input (``layer_{k}``, ``k = index + 1``).

Each diagnostic is declared once, in :mod:`lightning_gait.families` (its metric families,
its figure and its dashboard section); the names are re-exported here.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .families import (
    ALIGNMENT_FAMILIES,
    DIAGNOSTICS,
    ORTHOGONALITY_FAMILIES,
    TARGET_FAMILIES,
    Diagnostic,
    Panel,
    first_layer,
    register_diagnostic,
)

__all__ = [
    "Panel",
    "Diagnostic",
    "DIAGNOSTICS",
    "register_diagnostic",
    "first_layer",
    "ALIGNMENT_FAMILIES",
    "TARGET_FAMILIES",
    "ORTHOGONALITY_FAMILIES",
    "layer_key",
    "to_float64",
    "gradient_alignment",
    "backprop_gradients",
    "alignment_metrics",
    "rule_alignment",
    "alignment_at_init",
    "target_metrics",
    "orthogonality_deviation",
    "condition_number",
    "orthogonality_metrics",
    "warn_nonfinite",
    "summarize",
]


GradientPairs = Sequence[Tuple[Tensor, Optional[Tensor]]]


def layer_key(family: str, index: int) -> str:
    """``"{family}/layer_{index + 1}"``: the user-facing name of 0-based layer ``index``."""
    return f"{family}/layer_{index + 1}"


def to_float64(t: Tensor) -> Tensor:
    """A detached, flattened float64 copy of ``t`` (on the CPU where the device lacks float64)."""
    t = t.detach()
    if t.device.type == "mps":  # no float64 there
        t = t.cpu()
    return t.reshape(-1).to(torch.float64)


def _clamped_cosine(a: Tensor, b: Tensor) -> Tensor:
    """``<a, b> / (||a|| ||b||)`` clamped to [-1, 1]; NaN when either norm is 0 (never 0)."""
    cos = torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return cos.clamp(-1.0, 1.0)  # clamp keeps NaN


@torch.no_grad()
def gradient_alignment(update: Tensor, reference: Tensor) -> Dict[str, float]:
    """How well ``update`` agrees with ``reference`` (both flattened, in float64).

    Returns ``{"corr", "cos", "angle", "norm_ratio"}``: Pearson correlation, cosine
    similarity ``<g, g_bp> / (||g|| ||g_bp||)`` (both clamped to [-1, 1]), the angle
    ``arccos(cos)`` in degrees and ``||g|| / ||g_bp||``. Undefined values (a constant or
    zero vector) are NaN, never 0 or 1.
    """
    g = to_float64(update)
    g_ref = to_float64(reference)
    if g.shape != g_ref.shape:
        raise ValueError(
            f"update has {g.numel()} entries but reference has {g_ref.numel()}: they must be the same layer"
        )
    cos = _clamped_cosine(g, g_ref)
    corr = _clamped_cosine(g - g.mean(), g_ref - g_ref.mean())
    angle = torch.rad2deg(torch.arccos(cos))
    ratio = torch.linalg.vector_norm(g) / torch.linalg.vector_norm(g_ref)
    return {"corr": float(corr), "cos": float(cos), "angle": float(angle), "norm_ratio": float(ratio)}


@torch.enable_grad()
def backprop_gradients(net: nn.Module, x: Tensor, y: Tensor, *, loss_reduction: str = "sum") -> List[Tuple[Tensor, Tensor]]:
    """Backprop's ``(dW, db)`` per layer (input to output) of the rule's loss, without ``.grad``.

    The loss is ``CE(net.logits(a_L), y)`` with ``reduction=loss_reduction`` (step 2 of
    "One training step" in ``docs/gait-prop.md``), differentiated by
    :func:`torch.autograd.grad`, so no parameter's ``.grad`` is read or written. The
    network is used as it is (its dtype and device); nothing is stepped.
    """
    if loss_reduction not in ("sum", "mean"):
        raise ValueError(f"loss_reduction must be 'sum' or 'mean', got {loss_reduction!r}")
    trace = net.trace(x)
    loss = F.cross_entropy(net.logits(trace.output), y, reduction=loss_reduction)
    return net.pair_gradients(loss)


def alignment_metrics(updates: GradientPairs, reference: GradientPairs) -> Dict[str, float]:
    """Per layer, :func:`gradient_alignment` of the weight updates (biases excluded).

    ``updates`` and ``reference`` are ``(dW, db)`` per layer, input to output. Returns
    ``bp_corr/layer_{k}``, ``bp_cos/layer_{k}``, ``bp_angle/layer_{k}`` and
    ``bp_norm_ratio/layer_{k}`` for ``k = 1..L``.
    """
    if len(updates) != len(reference):
        raise ValueError(f"updates cover {len(updates)} layers but reference covers {len(reference)}")
    metrics: Dict[str, float] = {}
    for i, ((dw, _), (dw_ref, _)) in enumerate(zip(updates, reference)):
        values = gradient_alignment(dw, dw_ref)
        metrics[layer_key("bp_corr", i)] = values["corr"]
        metrics[layer_key("bp_cos", i)] = values["cos"]
        metrics[layer_key("bp_angle", i)] = values["angle"]
        metrics[layer_key("bp_norm_ratio", i)] = values["norm_ratio"]
    return metrics


def rule_alignment(rule, x: Tensor, y: Tensor) -> Dict[str, float]:
    """:func:`alignment_metrics` of ``rule.local_gradients(x, y)`` against backprop's.

    ``rule`` is a :class:`~lightning_gait.rules.LocalLearningRule` (it needs ``net``,
    ``loss_reduction`` and ``local_gradients``). Both gradients are taken at the rule's
    current weights on the same batch; neither touches ``.grad`` nor steps.
    """
    for attr in ("net", "loss_reduction", "local_gradients"):
        if not hasattr(rule, attr):
            raise ValueError(
                f"rule must be a LocalLearningRule-like module with .{attr}; got {type(rule).__name__}"
            )
    updates = rule.local_gradients(x, y)
    reference = backprop_gradients(rule.net, x, y, loss_reduction=rule.loss_reduction)
    return alignment_metrics(updates, reference)


def alignment_at_init(rule, x: Tensor, y: Tensor, *, num_networks: int = 10, seed: int = 0) -> Dict[str, Tensor]:
    """The paper's Fig. 2B: :func:`rule_alignment` on ``num_networks`` freshly initialised networks.

    The rule's network is re-initialised in place (``net.reset_parameters()`` under
    ``torch.manual_seed(seed + j)`` for network ``j``, inside a forked RNG so the caller's
    random state is untouched), measured, and then given back its own weights and the
    rule its ``last_diagnostics``. Returns, per metric name, a float64 tensor of
    ``num_networks`` values (summarise with ``.mean()`` / ``.std()``; NaNs are kept).
    """
    if not isinstance(num_networks, int) or num_networks < 1:
        raise ValueError(f"num_networks must be a positive integer, got {num_networks!r}")
    net = rule.net
    if not hasattr(net, "reset_parameters"):
        raise ValueError(f"rule.net ({type(net).__name__}) has no reset_parameters(); cannot re-initialise it")
    saved = [p.detach().clone() for p in net.parameters()]
    saved_diagnostics = getattr(rule, "last_diagnostics", None)
    devices = [x.device] if x.device.type == "cuda" else []
    per_network: List[Dict[str, float]] = []
    try:
        for j in range(num_networks):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed + j)
                with torch.no_grad():
                    net.reset_parameters()
            per_network.append(rule_alignment(rule, x, y))
    finally:
        with torch.no_grad():
            for p, value in zip(net.parameters(), saved):
                p.copy_(value)
        if hasattr(rule, "last_diagnostics"):
            rule.last_diagnostics = saved_diagnostics
    return {name: torch.tensor([m[name] for m in per_network], dtype=torch.float64) for name in per_network[0]}


@torch.no_grad()
def target_metrics(trace) -> Dict[str, float]:
    """Target statistics of one batch's :class:`~lightning_gait.targets.TargetTrace`.

    Per layer ``l`` (input to output), in float64:

    * ``target_norm/layer_{k}``: batch mean of ``||t_l - a_l||_2`` (over the layer's units);
    * ``gamma/layer_{k}``, ``gamma_min/...``, ``gamma_max/...``: mean, min and max over
      the batch of the gamma used at layer ``l`` (eq. 5 when normalized: per sample).
      Only for layers that form a target below them (not layer 1, never inverted);
    * ``log10_multiplier/layer_{k}`` (mean), ``log10_multiplier_min/...``,
      ``log10_multiplier_max/...``: the per-sample multiplier ``m_l = prod 1/gamma``
      (step 4) in log10, its range over the batch.
    """
    metrics: Dict[str, float] = {}
    for i, difference in enumerate(trace.differences):
        if difference is None:
            continue
        norms = torch.linalg.vector_norm(difference.detach().to(torch.float64).flatten(1), dim=1)
        metrics[layer_key("target_norm", i)] = float(norms.mean())
    for i, gamma in enumerate(trace.gammas):
        if gamma is None:
            continue
        g = to_float64(gamma)
        metrics[layer_key("gamma", i)] = float(g.mean())
        metrics[layer_key("gamma_min", i)] = float(g.min())
        metrics[layer_key("gamma_max", i)] = float(g.max())
    for i, multiplier in enumerate(trace.multipliers):
        if multiplier is None:
            continue
        log_m = torch.log10(to_float64(multiplier))
        metrics[layer_key("log10_multiplier", i)] = float(log_m.mean())
        metrics[layer_key("log10_multiplier_min", i)] = float(log_m.min())
        metrics[layer_key("log10_multiplier_max", i)] = float(log_m.max())
    return metrics


@torch.no_grad()
def orthogonality_deviation(weight: Tensor) -> float:
    """``||W W^T - I||_F / sqrt(n)`` of a square ``n x n`` matrix, in float64 (0 if orthogonal)."""
    if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"weight must be a square matrix, got shape {tuple(weight.shape)}")
    w = weight.detach()
    if w.device.type == "mps":
        w = w.cpu()
    w = w.to(torch.float64)
    gram = w @ w.T
    gram.diagonal().sub_(1.0)
    return float(torch.linalg.matrix_norm(gram) / math.sqrt(w.shape[0]))


@torch.no_grad()
def condition_number(weight: Tensor) -> float:
    """``sigma_max(W) / sigma_min(W)`` in float64 (1 if orthogonal, inf if singular)."""
    w = weight.detach()
    if w.device.type == "mps":
        w = w.cpu()
    sigma = torch.linalg.svdvals(w.to(torch.float64))
    return float(sigma.max() / sigma.min())


def orthogonality_metrics(net: nn.Module, *, condition: bool = True) -> Dict[str, float]:
    """``ortho/layer_{k}`` (and ``cond/layer_{k}`` when ``condition``) for every square layer.

    ``net`` is an :class:`~lightning_gait.networks.InvertibleNetwork`; its
    ``orthogonality_terms()`` are the square matrices of the layers after the first.
    """
    metrics: Dict[str, float] = {}
    for i, weight in net.orthogonality_terms():
        metrics[layer_key("ortho", i)] = orthogonality_deviation(weight)
        if condition:
            metrics[layer_key("cond", i)] = condition_number(weight)
    return metrics


def warn_nonfinite(metrics: Dict[str, float], *, where: str = "") -> List[str]:
    """Warn (once per call) about the metrics that are NaN; return their names.

    The values are left as they are: a NaN is logged as NaN, never replaced.
    """
    bad = [name for name, value in metrics.items() if isinstance(value, float) and math.isnan(value)]
    if bad:
        suffix = f" {where}" if where else ""
        warnings.warn(
            f"diagnostic metrics are NaN{suffix}: {', '.join(sorted(bad))} (logged as NaN; a zero or "
            "constant gradient, or a non-finite update, has no direction)",
            RuntimeWarning,
            stacklevel=2,
        )
    return bad


def summarize(values: Dict[str, Tensor]) -> Dict[str, Tuple[float, float]]:
    """``name -> (mean, std)`` of :func:`alignment_at_init`'s per-network values (NaN kept)."""
    out = {}
    for name, v in values.items():
        std = float(v.std()) if v.numel() > 1 else float("nan")
        out[name] = (float(v.mean()), std)
    return out

