"""``InvertibleActivation.nudge_difference``: GAIT-prop's nudge in the difference form.

The leaky ReLU computes it as ``gamma f'(z) e`` and fixes, in place, the few units whose
nudge crosses the kink; it must agree with the composition the other activations use,
``inverse_difference(z, gamma f'(z)^2 e)``, to a few ulps, crossings included, in
float64 and float32, on dense and convolutional (channels-last) shapes.
"""
from __future__ import annotations

import pytest
import torch

from lightning_gait.activations import ACTIVATIONS, InvertibleActivation, LeakyReLU, build_activation


def composed(act, z, e, gamma):
    return InvertibleActivation.nudge_difference(act, z, e, gamma)


def data(shape, dtype, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    flat = z.view(shape[0], -1)
    flat[:, ::7] *= scale  # many units within the nudge's reach of the kink
    flat[0, 0] = 0.0
    e = torch.randn(shape, generator=g, dtype=torch.float64)
    gamma = torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=g, dtype=torch.float64) * scale
    return z.to(dtype), e.to(dtype), gamma.to(dtype)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-14), (torch.float32, 1e-6)])
@pytest.mark.parametrize("shape", [(32, 40), (16, 6, 4, 4)])
@pytest.mark.parametrize("scale", [1e-7, 1e-3, 1.0])
def test_leaky_relu_nudge_agrees_with_the_composition(dtype, tolerance, shape, scale):
    act = LeakyReLU(0.1)
    z, e, gamma = data(shape, dtype, scale)
    if len(shape) == 4:
        z, e = (t.contiguous(memory_format=torch.channels_last) for t in (z, e))
    a = act(z)
    want = composed(act, z, e, gamma)
    got = act.nudge_difference(z, e, gamma, a)
    assert got.dtype == dtype and got.shape == z.shape
    rel = ((got - want).abs() / want.abs().clamp_min(torch.finfo(dtype).tiny)).max()
    assert rel <= tolerance
    crossings = ((a > 0) != (a + gamma * act.derivative(z) ** 2 * e > 0)).sum()
    assert crossings > 0, "the data must hold units whose nudge crosses the kink"
    torch.testing.assert_close(act.nudge_difference(z, e, gamma), got, rtol=0, atol=0)  # a recomputed
    slope_e = act.times_derivative(z, e)
    kept = slope_e.clone()
    torch.testing.assert_close(act.nudge_difference(z, e, gamma, a, slope_e), got, rtol=0, atol=0)  # reused
    assert torch.equal(slope_e, kept)  # only read


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_has_a_nudge(name):
    act = build_activation(name) if name == "identity" else build_activation(name, alpha=0.1)
    z, e, gamma = data((8, 12), torch.float64, 1e-3)
    torch.testing.assert_close(act.nudge_difference(z, e, gamma, act(z)), composed(act, z, e, gamma),
                               rtol=1e-13, atol=0)


def test_nonfinite_differences_stay_nonfinite():
    act = LeakyReLU(0.1)
    z, e, gamma = data((4, 10), torch.float64, 1e-3)
    e[1, 3] = float("nan")
    e[2, 4] = float("inf")
    out = act.nudge_difference(z, e, gamma, act(z))
    assert not torch.isfinite(out[1, 3]) and not torch.isfinite(out[2, 4])
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[3]).all()


@pytest.mark.parametrize("shape", [(4, 10), (4, 10, 2, 2)])
def test_a_nan_activation_stays_nan_and_its_rows_other_units_stay_exact(shape):
    act = LeakyReLU(0.1)
    z, e, gamma = data(shape, torch.float64, 1e-3)
    if len(shape) == 4:
        z, e = (t.contiguous(memory_format=torch.channels_last) for t in (z, e))
    idx = (1, 3) + (0,) * (len(shape) - 2)
    other = (1, 5) + (0,) * (len(shape) - 2)  # same row (sample, or pixel) as idx
    z[idx] = float("nan")
    z[other] = 1e-6  # just above the kink; a nudge of gamma f'(z)^2 e crosses it
    e[other] = -1.0
    gamma[1] = 1e-3
    want = composed(act, z, e, gamma)
    got = act.nudge_difference(z, e, gamma, act(z))
    assert torch.isnan(got[idx])
    assert (act(z[other]) + gamma[1].reshape(()) * e[other] < 0)  # it crosses
    torch.testing.assert_close(got[other], want[other], rtol=1e-14, atol=0)


def test_times_derivative_is_the_slope_times_the_gradient():
    for name in sorted(ACTIVATIONS):
        act = build_activation(name) if name == "identity" else build_activation(name, alpha=0.1)
        z = torch.linspace(-3, 3, 101, dtype=torch.float64)
        grad = torch.randn(101, dtype=torch.float64)
        torch.testing.assert_close(act.times_derivative(z, grad), grad * act.derivative(z), rtol=1e-15, atol=0)
