"""Invertible activations: inverse, SL-ReLU constants, continuity, derivative, exact inverse difference.

All checks are float64 unless a test says otherwise. The reference for
``inverse_difference`` is the same function evaluated in 60-digit decimal arithmetic
(``decimal`` from the standard library), so that it is exact to far below float64's
round-off.
"""
from __future__ import annotations

import decimal
from decimal import Decimal

import pytest
import torch
from torch.nn import functional as F

from lightning_gait.activations import (
    ACTIVATIONS,
    Identity,
    LeakyReLU,
    SmoothLeakyReLU,
    build_activation,
)

ALPHA = 0.1
ALL_NAMES = sorted(ACTIVATIONS)


def make(name: str):
    return build_activation(name) if name == "identity" else build_activation(name, alpha=ALPHA)


# ---------------------------------------------------------------- high-precision references
# Every Decimal operation below runs under this 60-digit context (operators use the
# thread's current context, so each function enters it explicitly).
CTX = decimal.Context(prec=60)

with decimal.localcontext(CTX):
    D_ALPHA = Decimal(1) / Decimal(10)
    D_LAM = (D_ALPHA / (1 - D_ALPHA)).ln()
    D_BETA = ((1 + D_LAM.exp()).ln() - D_ALPHA * D_LAM) / D_ALPHA
    D_DELTA = Decimal(2).ln()
    D_Y_LAM = (1 + D_LAM.exp()).ln() - D_DELTA


def _sl_forward(x: Decimal) -> Decimal:
    if x > D_LAM:
        return (1 + x.exp()).ln() - D_DELTA
    return D_ALPHA * (x + D_BETA) - D_DELTA


def _sl_inverse(y: Decimal) -> Decimal:
    if y > D_Y_LAM:
        return ((y + D_DELTA).exp() - 1).ln()
    return (y + D_DELTA) / D_ALPHA - D_BETA


def _lrelu_forward(x: Decimal) -> Decimal:
    return x if x >= 0 else D_ALPHA * x


def _lrelu_inverse(y: Decimal) -> Decimal:
    return y if y >= 0 else y / D_ALPHA


REFERENCE = {
    "identity": (lambda x: x, lambda y: y),
    "leaky_relu": (_lrelu_forward, _lrelu_inverse),
    "smooth_leaky_relu": (_sl_forward, _sl_inverse),
}


def reference_inverse_difference(name: str, z: float, h: float) -> Decimal:
    """``f^-1(f(z) + h) - z`` in 60-digit arithmetic, for the float inputs as given."""
    forward, inverse = REFERENCE[name]
    with decimal.localcontext(CTX):
        dz, dh = Decimal(z), Decimal(h)  # exact conversions of the binary floats
        return inverse(forward(dz) + dh) - dz


# ---------------------------------------------------------------- inverse round trip
@pytest.mark.parametrize("name", ALL_NAMES)
def test_inverse_round_trip_on_dense_grid(name):
    act = make(name)
    x = torch.linspace(-8.0, 8.0, 400_001, dtype=torch.float64)
    # add the kinks themselves and their float64 neighbours
    kinks = torch.tensor([0.0, SmoothLeakyReLU(alpha=ALPHA).lam], dtype=torch.float64)
    near = torch.cat([kinks, torch.nextafter(kinks, kinks + 1), torch.nextafter(kinks, kinks - 1)])
    x = torch.cat([x, near])
    err = (act.inverse(act.forward(x)) - x).abs().max().item()
    assert err <= 1e-12, f"{name}: max |f^-1(f(x)) - x| = {err:.3e} on [-8, 8] (float64)"


@pytest.mark.parametrize("name", ALL_NAMES)
def test_forward_is_strictly_increasing(name):
    act = make(name)
    x = torch.linspace(-8.0, 8.0, 100_001, dtype=torch.float64)
    assert bool((act.forward(x).diff() > 0).all())


# ---------------------------------------------------------------- SL-ReLU constants
def test_smooth_leaky_relu_constants_match_the_spec():
    act = SmoothLeakyReLU(alpha=ALPHA)
    # numbers printed in docs/gait-prop.md, "Activations"
    assert act.lam == pytest.approx(-2.1972245773, abs=1e-9)
    assert act.beta == pytest.approx(3.2508297339, abs=1e-9)
    assert act.delta == pytest.approx(0.6931471806, abs=1e-9)
    assert act.y_lam == pytest.approx(-0.5877866649, abs=1e-9)
    # and the defining formulas, evaluated in 60 digits
    assert act.lam == pytest.approx(float(D_LAM), abs=1e-15)
    assert act.y_lam == pytest.approx(float(D_Y_LAM), abs=1e-15)
    assert act.beta == pytest.approx(float(D_BETA), abs=1e-14)
    assert act.delta == pytest.approx(float(D_DELTA), abs=1e-15)


def test_smooth_leaky_relu_value_and_slope_continuous_at_lambda():
    act = SmoothLeakyReLU(alpha=ALPHA)
    lam = torch.tensor(act.lam, dtype=torch.float64)
    upper_value = F.softplus(lam) - act.delta
    lower_value = act.alpha * (lam + act.beta) - act.delta
    assert abs((upper_value - lower_value).item()) <= 1e-15
    upper_slope = torch.sigmoid(lam)
    lower_slope = act.alpha
    assert abs(upper_slope.item() - lower_slope) <= 1e-15
    # through the module: the two float64 neighbours of lambda sit on different branches
    around = torch.stack([torch.nextafter(lam, lam - 1), lam, torch.nextafter(lam, lam + 1)])
    values = act.forward(around)
    assert (values.diff().abs() <= 1e-15).all()
    slopes = act.derivative(around)
    assert (slopes.diff().abs() <= 1e-15).all()
    assert act.y_lam == pytest.approx(upper_value.item(), abs=1e-15)


def test_smooth_leaky_relu_anchor_values():
    act = SmoothLeakyReLU(alpha=ALPHA)
    zero = torch.zeros(1, dtype=torch.float64)
    assert act.forward(zero).item() == pytest.approx(0.0, abs=1e-16)
    assert act.derivative(zero).item() == pytest.approx(0.5, abs=1e-16)
    # far out, the slopes are 1 and alpha
    big = torch.tensor([60.0, -60.0], dtype=torch.float64)
    assert act.derivative(big).tolist() == pytest.approx([1.0, ALPHA], abs=1e-15)
    assert act.inverse(act.forward(big)).tolist() == pytest.approx([60.0, -60.0], abs=1e-12)


# ---------------------------------------------------------------- derivative
@pytest.mark.parametrize("name", ALL_NAMES)
def test_derivative_equals_autograd(name):
    act = make(name)
    lam = SmoothLeakyReLU(alpha=ALPHA).lam
    z = torch.cat(
        [
            torch.linspace(-8.0, 8.0, 20_001, dtype=torch.float64),
            torch.tensor([0.0, lam, lam + 1e-12, lam - 1e-12, 1e-300, -1e-300], dtype=torch.float64),
        ]
    ).requires_grad_(True)
    (autograd_slope,) = torch.autograd.grad(act.forward(z).sum(), z)
    err = (act.derivative(z.detach()) - autograd_slope).abs().max().item()
    assert err <= 1e-15, f"{name}: max |f'(z) - autograd| = {err:.3e}"


# ---------------------------------------------------------------- inverse difference
LAM = SmoothLeakyReLU(alpha=ALPHA).lam
Z_POINTS = [
    -7.5, -3.0, -1.0, -0.2, 0.0, 0.3, 1.0, 4.0, 7.9,
    # next to SL-ReLU's switch and leaky ReLU's kink, on both sides
    LAM - 1e-3, LAM - 1e-8, LAM - 1e-10, LAM - 1e-14, LAM, LAM + 1e-14, LAM + 1e-10, LAM + 1e-8, LAM + 1e-3,
    -1e-3, -1e-9, -1e-12, -1e-300, 1e-300, 1e-12, 1e-9, 1e-3,
]  # fmt: skip
H_POINTS = [s * m for m in (1e-15, 1e-12, 1e-9, 1e-7, 1e-5, 1e-3, 1e-1) for s in (1.0, -1.0)]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_inverse_difference_is_exact_in_float64(name):
    """``f^-1(f(z) + h) - z`` to a few float64 ulps, including steps across the kink."""
    act = make(name)
    zs, hs = zip(*[(z, h) for z in Z_POINTS for h in H_POINTS])
    got = act.inverse_difference(torch.tensor(zs, dtype=torch.float64), torch.tensor(hs, dtype=torch.float64))
    crossings = 0
    for z, h, value in zip(zs, hs, got.tolist()):
        ref = reference_inverse_difference(name, z, h)
        with decimal.localcontext(CTX):
            rel = abs(Decimal(value) - ref) / abs(ref)
        assert rel <= Decimal("1e-13"), (
            f"{name}: inverse_difference(z={z!r}, h={h!r}) = {value!r}, exact {ref:.17e} (rel err {rel:.2e})"
        )
        kink = LAM if name == "smooth_leaky_relu" else 0.0
        crossings += (Decimal(z) > Decimal(kink)) != (Decimal(z) + ref > Decimal(kink))
    if name != "identity":
        assert crossings >= 10, "the grid must contain steps across the kink"


@pytest.mark.parametrize("name", ALL_NAMES)
def test_inverse_difference_is_exact_in_float32(name):
    """The difference form's float32 promise: relative error ~ float32's epsilon, kinks included."""
    act = make(name)
    zs, hs = zip(*[(z, h) for z in Z_POINTS for h in H_POINTS if abs(h) >= 1e-12])
    z32 = torch.tensor(zs, dtype=torch.float32)
    h32 = torch.tensor(hs, dtype=torch.float32)
    got = act.inverse_difference(z32, h32)
    assert got.dtype == torch.float32
    for z, h, value in zip(z32.tolist(), h32.tolist(), got.tolist()):
        ref = reference_inverse_difference(name, z, h)
        with decimal.localcontext(CTX):
            rel = abs(Decimal(value) - ref) / abs(ref)
        # float32's kink sits at lambda rounded to float32, within 1.2e-7 of the true one,
        # which changes a slope by at most ~1e-7 relative
        assert rel <= Decimal("1e-5"), (
            f"{name}: float32 inverse_difference(z={z!r}, h={h!r}) = {value!r}, exact {ref:.9e} (rel err {rel:.2e})"
        )


@pytest.mark.parametrize("name", ALL_NAMES)
def test_inverse_difference_agrees_with_plain_formula_for_large_steps(name):
    """For steps that round-off cannot hurt, the same value as ``f^-1(f(z) + h) - z``."""
    act = make(name)
    z = torch.linspace(-6.0, 6.0, 2_001, dtype=torch.float64)
    for h in (0.5, -0.5, 2.0, -0.05):
        h_t = torch.full_like(z, h)
        plain = act.inverse(act.forward(z) + h_t) - z
        err = (act.inverse_difference(z, h_t) - plain).abs().max().item()
        assert err <= 1e-12, f"{name}, h={h}: {err:.3e}"


# ---------------------------------------------------------------- registry and arguments
def test_registry_and_identity():
    assert set(ACTIVATIONS) == {"identity", "leaky_relu", "smooth_leaky_relu"}
    assert isinstance(build_activation("identity"), Identity)
    assert isinstance(build_activation("leaky_relu"), LeakyReLU)
    assert build_activation("leaky_relu").alpha == ALPHA
    assert isinstance(build_activation("smooth_leaky_relu"), SmoothLeakyReLU)


def test_unknown_activation_raises_value_error_naming_the_argument():
    with pytest.raises(ValueError, match="activation"):
        build_activation("relu")


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
@pytest.mark.parametrize("cls", [LeakyReLU, SmoothLeakyReLU])
def test_non_invertible_alpha_raises(cls, alpha):
    with pytest.raises(ValueError, match="alpha"):
        cls(alpha=alpha)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha", [0.1, 0.059, 0.06, 0.3])
def test_leaky_relu_slopes_are_exact_in_every_dtype(dtype, alpha):
    """The mask-free slopes are exactly 1 and exactly alpha (1/alpha for the inverse), also
    where 1/alpha is not representable; NaN and infinities stay non-finite in derivative."""
    act = LeakyReLU(alpha)
    z = torch.tensor([-2.0, -0.0, 0.0, 3.0, float("nan"), float("inf"), -float("inf")], dtype=dtype)
    d = act.derivative(z)
    alpha_t = torch.tensor(alpha, dtype=dtype)
    assert d[3] == 1 and d[0] == alpha_t and d[1] == alpha_t and d[2] == alpha_t
    assert not torch.isfinite(d[4:]).any()
    h = torch.tensor([1e-2, 1e-2, 1e-2], dtype=dtype)
    step = act.inverse_difference(torch.tensor([3.0, -2.0, 0.5], dtype=dtype), h)
    assert step[0] == h[0]  # slope exactly 1 above the kink
    assert step[1] == h[1] * torch.tensor(1.0 / alpha, dtype=dtype)
    assert step[2] == h[2]
