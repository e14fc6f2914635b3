"""Writing a new learning rule by overriding one method: two documented examples that train.

1. ``LayerScheduledGAIT`` overrides :meth:`GAITProp.layer_gamma` only: a per-layer gamma
   schedule, larger towards the input, where the paper's fixed gamma loses the target
   difference to round-off (it shrinks like ``gamma^k``).
2. ``DirectFeedbackAlignment`` overrides :meth:`LocalLearningRule.layer_signals` only:
   every hidden layer receives the output error through its own fixed random matrix
   (Nokland, 2016), instead of through the layers above it.

The base class does the rest: the local objective, the orthogonality penalty, the single
``manual_backward``, non-finite checks, the optimizer step, metrics and logging.
"""
from __future__ import annotations

import inspect
import math
from contextlib import contextmanager

import pytest
import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_gait import Backprop, GAITProp, InvertibleMLP, LocalLearningRule
from lightning_gait.targets import fixed_gamma


# ---------------------------------------------------------------- example 1
class LayerScheduledGAIT(GAITProp):
    """GAIT-prop with a per-layer gamma: ``gamma_l = gamma * growth ** (L - l)``.

    The output layer ``L`` uses ``gamma``; each layer further down multiplies it by
    ``growth``, which slows the ``gamma^k`` shrinking of the target difference that
    makes the paper's fixed gamma fail near the input. ``index`` is 0-based.
    """

    growth: float = 10.0

    def layer_gamma(self, index: int, difference: torch.Tensor) -> torch.Tensor:
        layers_below_output = self.net.num_layers - 1 - index
        return fixed_gamma(difference, self.gamma * self.growth**layers_below_output)


# ---------------------------------------------------------------- example 2
class DirectFeedbackAlignment(LocalLearningRule):
    """Direct feedback alignment: hidden layer ``l`` gets ``s_l = g B_l``.

    ``g = dL/da_L`` is the output error and ``B_l`` a fixed random matrix, redrawn
    identically at every step from ``feedback_seed`` (cheap for small networks; register
    buffers in ``__init__`` for large ones, as :class:`FeedbackAlignment` does).
    """

    feedback_seed: int = 0

    def layer_signals(self, trace, g, y):
        generator = torch.Generator().manual_seed(self.feedback_seed)
        signals = []
        for post in trace.post[:-1]:
            feedback = torch.randn(g.shape[1], post.shape[1], generator=generator, dtype=g.dtype)
            signals.append(g @ feedback.to(g.device) / math.sqrt(g.shape[1]))
        return signals + [g]


EXAMPLES = [LayerScheduledGAIT, DirectFeedbackAlignment]


# ---------------------------------------------------------------- checks
@contextmanager
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def small_problem(seed: int = 0):
    """A 4-class Gaussian-cluster problem in 20 dimensions and a small network."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 20, generator=g, dtype=torch.float64)
    centres = 1.5 * centres / centres.norm(dim=1, keepdim=True)
    y = torch.randint(0, 4, (512,), generator=g)
    x = centres[y] + 0.3 * torch.randn(512, 20, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    with float64_default():
        net = InvertibleMLP(20, 32, 3, 4, activation="smooth_leaky_relu")
    return net, TensorDataset(x, y)


@pytest.mark.parametrize("cls", EXAMPLES, ids=lambda c: c.__name__)
def test_example_is_short_and_overrides_one_method(cls):
    lines = inspect.getsource(cls).splitlines()
    assert len(lines) < 30, f"{cls.__name__} takes {len(lines)} lines"
    methods = [name for name, value in vars(cls).items() if inspect.isfunction(value)]
    assert len(methods) == 1, methods


@pytest.mark.timeout(300)  # a hang guard, not a speed check
@pytest.mark.parametrize("cls", EXAMPLES, ids=lambda c: c.__name__)
def test_example_trains(cls):
    net, data = small_problem()
    x, y = data.tensors
    before = F.cross_entropy(net(x), y).item()
    rule = cls(net, lr=3e-3)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=10,  # 80 steps: 0.56 (LayerScheduledGAIT) and 0.03 (DFA) of the start
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision="64-true",
    )
    trainer.fit(rule, DataLoader(data, batch_size=64, shuffle=True))
    with torch.no_grad():
        after = F.cross_entropy(net(x), y).item()
    assert after < 0.7 * before, f"{cls.__name__}: {before:.4f} -> {after:.4f}"
    assert "train/loss" in trainer.callback_metrics


def test_layer_schedule_is_used_and_keeps_the_rule_exact():
    net, data = small_problem(1)
    x, y = data.tensors[0][:128], data.tensors[1][:128]
    rule = LayerScheduledGAIT(net, gamma=1e-4, target_mode="difference")
    grads = rule.local_gradients(x, y)
    gammas = rule.last_diagnostics.gammas
    top = net.num_layers - 1
    for i in range(1, net.num_layers):
        assert torch.allclose(gammas[i], torch.full_like(gammas[i], 1e-4 * 10.0 ** (top - i)))
    # any gamma schedule gives backprop's update up to the nudges' linearization error
    reference = Backprop(net).local_gradients(x, y)
    for i, ((dw, _), (bw, _)) in enumerate(zip(grads, reference)):
        assert (dw - bw).norm() / bw.norm() <= 1e-2, f"layer {i + 1}"


def test_direct_feedback_alignment_feedback_is_fixed_and_direct():
    net, data = small_problem(2)
    x, y = data.tensors[0][:64], data.tensors[1][:64]
    rule = DirectFeedbackAlignment(net)
    first, second = rule.local_gradients(x, y), rule.local_gradients(x, y)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    reference = Backprop(net).local_gradients(x, y)
    torch.testing.assert_close(first[-1][0], reference[-1][0])  # the output layer is backprop's
    assert (first[0][0] - reference[0][0]).norm() / reference[0][0].norm() > 0.1
