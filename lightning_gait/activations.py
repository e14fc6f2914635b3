"""Invertible activations: value, inverse, derivative, and an exact inverse difference.

Each activation ``f`` here is strictly increasing, so ``f^-1`` exists everywhere on its
range. Besides ``forward``, ``inverse`` and ``derivative`` (``f'`` evaluated at the
*pre-activation* ``z``), every activation offers ``inverse_difference(z, h)``:

    f^-1(f(z) + h) - z

computed without forming ``f(z) + h``. That is what the numerically exact
("difference") form of GAIT-prop needs: target differences ``h`` are tiny (``1e-7`` and
smaller), and ``f^-1(a + h) - f^-1(a)`` loses them to round-off when evaluated as
written, in float32 above all (``docs/gait-prop.md``, "Numerics").

Constants follow ``docs/gait-prop.md`` ("Activations"), with ``alpha = 0.1``.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Dict, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "InvertibleActivation",
    "Identity",
    "LeakyReLU",
    "SmoothLeakyReLU",
    "ACTIVATIONS",
    "build_activation",
]


def _row_view(t: Tensor):
    """``(rows, rows_per_sample)``: a 2-D view of ``t`` without a copy, one row per pixel of
    a channels-last ``(N, C, H, W)`` tensor or per sample of a contiguous one; ``None``
    when ``t`` has no such view."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = t.shape
        return t.permute(0, 2, 3, 1).reshape(n * h * w, c), h * w
    if t.is_contiguous() and t.dim() >= 1:
        return t.reshape(t.shape[0], -1), 1
    return None


@lru_cache(maxsize=None)
def _rounded(value: float, dtype: torch.dtype) -> float:
    return float(torch.tensor(value, dtype=dtype)) if dtype.is_floating_point else value


def _slope_times(v: Tensor, x: Tensor, slope: float, out: Optional[Tensor] = None) -> Tensor:
    """``v`` where ``x > 0``, ``v * slope`` elsewhere (NaN in ``x`` counts as not above 0).

    PyTorch's leaky-ReLU backward: one fused pass; ``out`` may be ``v`` itself. The slope
    is first rounded to ``v``'s dtype, so that the product is ``v`` times that number,
    rounded once, in every dtype (half-precision kernels compute in float32).
    """
    slope = _rounded(slope, v.dtype)
    if out is None:
        return torch.ops.aten.leaky_relu_backward(v, x, slope, False)
    return torch.ops.aten.leaky_relu_backward.grad_input(v, x, slope, False, grad_input=out)


class InvertibleActivation(nn.Module):
    """Base class of a strictly increasing elementwise activation.

    Subclasses implement :meth:`forward`, :meth:`inverse`, :meth:`derivative` and
    :meth:`inverse_difference`. They carry no parameters.
    """

    name: str = "abstract"

    def forward(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, a: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``f'(z)`` at the pre-activation ``z``."""
        raise NotImplementedError

    def inverse_difference(self, z: Tensor, h: Tensor) -> Tensor:  # pragma: no cover
        """``f^-1(f(z) + h) - z``, exact for tiny ``h``."""
        raise NotImplementedError

    def times_derivative(self, z: Tensor, grad: Tensor) -> Tensor:
        """``grad * f'(z)``: a gradient with respect to ``f(z)`` taken back to ``z``."""
        return grad * self.derivative(z)

    def nudge_difference(self, z: Tensor, e: Tensor, gamma: Tensor, a: Optional[Tensor] = None,
                         slope_e: Optional[Tensor] = None) -> Tensor:
        """GAIT-prop's nudge in the difference form: ``f^-1(a + eps e) - z`` with
        ``eps = gamma f'(z)^2`` and ``a = f(z)``.

        ``gamma`` broadcasts against ``z`` (one value per sample, shaped ``(N, 1, ...)``);
        ``a``, when given, is ``f(z)`` as the forward pass computed it; ``slope_e``, when
        given, is :meth:`times_derivative` ``(z, e)`` as the caller computed it (an
        activation may reuse it; it is only read). Subclasses may compute the nudge with
        fewer passes over memory; the value is the same to round-off.
        """
        eps = gamma * self.derivative(z) ** 2
        return self.inverse_difference(z, eps * e)

    def extra_repr(self) -> str:
        return ""


class Identity(InvertibleActivation):
    """``f(x) = x``: the output layer and linear networks."""

    name = "identity"

    def forward(self, z: Tensor) -> Tensor:
        return z

    def inverse(self, a: Tensor) -> Tensor:
        return a

    def derivative(self, z: Tensor) -> Tensor:
        return torch.ones_like(z)

    def inverse_difference(self, z: Tensor, h: Tensor) -> Tensor:
        return h

    def times_derivative(self, z: Tensor, grad: Tensor) -> Tensor:
        return grad

    def nudge_difference(self, z: Tensor, e: Tensor, gamma: Tensor, a: Optional[Tensor] = None,
                         slope_e: Optional[Tensor] = None) -> Tensor:
        return gamma * e


class LeakyReLU(InvertibleActivation):
    """Leaky ReLU: ``f(x) = x`` for ``x >= 0``, ``alpha * x`` otherwise.

    Everything here is arithmetic on whole tensors, no boolean masks: on CPU
    ``torch.where`` over large batches is far slower than elementwise arithmetic
    (``benchmarks/README.md``), and these functions run at every layer of every step.
    The value is :func:`torch.nn.functional.leaky_relu` (whose backward autograd uses), the
    inverse a leaky ReLU with slope ``1 / alpha``. A product with a slope chosen by the
    sign of another tensor, ``v * (1 if x > 0 else c)``, is PyTorch's fused leaky-ReLU
    backward (``torch.ops.aten.leaky_relu_backward(v, x, c)``): one pass, exactly ``v`` or
    ``v * c`` rounded once. At ``z = 0`` exactly the slope is ``alpha``, as in PyTorch's
    leaky ReLU backward. :meth:`derivative` keeps NaN (and infinities) non-finite;
    :meth:`inverse_difference` carries them through ``f(z)`` and ``h``.
    """

    name = "leaky_relu"

    def __init__(self, alpha: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1) for an invertible leaky ReLU, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, z: Tensor) -> Tensor:
        return F.leaky_relu(z, self.alpha)

    def inverse(self, a: Tensor) -> Tensor:
        return F.leaky_relu(a, 1.0 / self.alpha)

    def derivative(self, z: Tensor) -> Tensor:
        # the slope times one, + 0 z: NaN and inf stay non-finite
        return _slope_times(torch.ones_like(z), z, self.alpha).add_(z * 0.0)

    def times_derivative(self, z: Tensor, grad: Tensor) -> Tensor:
        return _slope_times(grad, z, self.alpha)

    def inverse_difference(self, z: Tensor, h: Tensor) -> Tensor:
        return self._inverse_difference(z, h, self.forward(z), reuse_h=False)

    def nudge_difference(self, z: Tensor, e: Tensor, gamma: Tensor, a: Optional[Tensor] = None,
                         slope_e: Optional[Tensor] = None) -> Tensor:
        """``f^-1(a + eps e) - z`` with ``eps = gamma f'(z)^2``: ``gamma f'(z) e`` for every
        unit whose nudged value stays on its side of the kink, the exact crossing formula
        of :meth:`inverse_difference` for the others. ``f'(z) e`` is ``slope_e`` when
        given (bitwise what this method would compute), which saves a pass over memory.

        A unit can cross only where ``|a| <= |eps e| <= gamma max|e|`` (per sample). On a
        CPU the few rows (pixels, or samples of a dense layer) holding such a unit are
        found from each row's smallest ``|a|`` and take the full formula; the whole nudge
        then costs a few passes over memory. Elsewhere (a GPU, where elementwise work
        is cheap and finding them would synchronise), or for tensors without a row view,
        every unit takes the full formula.
        """
        a = self.forward(z) if a is None else a
        # gamma f'(z) e = eps e / f'(z)
        out = _slope_times(e, z, self.alpha).mul_(gamma) if slope_e is None else slope_e * gamma
        views = [_row_view(t) for t in (z, a, e, out)]
        if z.device.type != "cpu" or any(v is None for v in views):
            h = _slope_times(e, z, self.alpha * self.alpha).mul_(gamma)  # eps e: the squared slope is 1 or alpha^2
            return self._inverse_difference(z, h, a, reuse_h=True)
        (z_rows, per_sample), (a_rows, _), (e_rows, _), (out_rows, _) = views
        dims = tuple(range(1, e.dim()))
        largest = torch.maximum(e.amax(dim=dims), e.amin(dim=dims).neg())  # max |e| per sample, no copy of e
        g = gamma.reshape(-1) if gamma.numel() > 1 else gamma.reshape(1).expand(len(z))
        bound = largest * g * 1.001  # per sample, >= |eps e|, with room for rounding
        # a row is near when its smallest |a| is within its sample's bound; a row holding a NaN
        # (whose minimum is NaN) takes the full formula too, which carries the NaN through and
        # stays exact for the row's other units
        closest = a_rows.abs().amin(dim=1).view(len(z), per_sample)
        near = closest <= bound.unsqueeze(1)
        near |= closest.isnan()
        rows = near.view(-1).nonzero().squeeze(1)
        if rows.numel():
            zr = z_rows[rows]
            h = g[rows // per_sample].unsqueeze(1) * self.derivative(zr) ** 2 * e_rows[rows]
            out_rows[rows] = self._inverse_difference(zr, h, a_rows[rows], reuse_h=True)
        return out

    def _inverse_difference(self, z: Tensor, h: Tensor, a: Tensor, *, reuse_h: bool) -> Tensor:
        # f^-1(y) = y s(y) with s = 1 (y > 0) or 1/alpha, so with a = f(z) and u = a + h:
        #   f^-1(u) - z = h s(a) + u (s(u) - s(a)).
        # The second term is nonzero only when u crosses the kink, and then it is not
        # small, so nothing is lost to cancellation. It is computed as
        # f^-1(u) - u s(a): both products are the same rounded u * s when u does not
        # cross, so it is exactly zero there. (At a = 0, s(a) = 1/alpha, matching z <= 0.)
        inv_alpha = 1.0 / self.alpha
        u = a + h
        crossing = F.leaky_relu(u, _rounded(inv_alpha, u.dtype))  # the slope _slope_times uses
        crossing.sub_(_slope_times(u, a, inv_alpha, out=u))
        out = _slope_times(h, a, inv_alpha, out=h if reuse_h else None)
        return out.add_(crossing)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SmoothLeakyReLU(InvertibleActivation):
    """Smoothed leaky ReLU (SL-ReLU) of "Scaling up learning with GAIT-prop".

    With ``lambda = ln(alpha / (1 - alpha))`` (where ``sigmoid(lambda) = alpha``),
    ``beta = (softplus(lambda) - alpha * lambda) / alpha`` and ``delta = softplus(0)``
    (as ``lambda < 0``; ``alpha * beta`` otherwise)::

        f(x) = softplus(x) - delta             for x >  lambda
        f(x) = alpha * (x + beta) - delta      for x <= lambda

    so that ``f(0) = 0``, ``f'(0) = 1/2`` and value and slope are continuous at lambda
    (``C^1``, not ``C^2``).
    """

    name = "smooth_leaky_relu"

    def __init__(self, alpha: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1) for SL-ReLU, got {alpha}")
        self.alpha = float(alpha)
        self.lam = math.log(alpha / (1.0 - alpha))
        softplus_lam = math.log1p(math.exp(self.lam))
        self.beta = (softplus_lam - alpha * self.lam) / alpha
        self.delta = math.log(2.0) if self.lam < 0 else alpha * self.beta
        # the switch point in output space
        self.y_lam = softplus_lam - self.delta

    def forward(self, z: Tensor) -> Tensor:
        upper = F.softplus(z, beta=1.0, threshold=40.0) - self.delta
        lower = self.alpha * (z + self.beta) - self.delta
        return torch.where(z > self.lam, upper, lower)

    def inverse(self, a: Tensor) -> Tensor:
        c = a + self.delta
        upper_mask = a > self.y_lam
        # log(expm1(c)) = c + log(-expm1(-c)); stable for large c
        c_safe = torch.where(upper_mask, c, torch.ones_like(c))
        upper = c_safe + torch.log(-torch.expm1(-c_safe))
        lower = c / self.alpha - self.beta
        return torch.where(upper_mask, upper, lower)

    def derivative(self, z: Tensor) -> Tensor:
        return torch.where(z > self.lam, torch.sigmoid(z), torch.full_like(z, self.alpha))

    def inverse_difference(self, z: Tensor, h: Tensor) -> Tensor:
        # Upper branch, both ends: with c = softplus(z) = a + delta,
        #   f^-1(a + h) - z = log(expm1(c + h) / expm1(c)) = log1p(expm1(h) / sigmoid(z)).
        # Lower branch, both ends: h / alpha.
        # Across the switch the step is split at lambda, where sigmoid(lambda) = alpha, so
        # that nothing tiny is recovered by subtraction (z may lie arbitrarily close to
        # lambda, and then f^-1(a + h) - z would lose h to round-off). The distance from
        # a = f(z) to the switch value f(lambda), on z's side, is
        #   above: f(z) - f(lambda) = log1p(alpha * expm1(z - lambda))
        #   below: f(lambda) - f(z) = alpha * (lambda - z)
        # and it also decides, without rounding a + h, whether the step crosses:
        #   up   (z <= lambda, h > below): (lambda - z) + log1p(expm1(h - below) / alpha)
        #   down (z > lambda, h <= -above): (lambda - z) + (h + above) / alpha
        zeros = torch.zeros_like(h)
        z_upper = z > self.lam
        to_switch = self.lam - z
        room_above = torch.log1p(self.alpha * torch.expm1(torch.where(z_upper, -to_switch, zeros)))
        room_below = torch.where(z_upper, zeros, self.alpha * to_switch)
        u_upper = torch.where(z_upper, h + room_above > 0, h > room_below)
        both_upper_mask = z_upper & u_upper
        up_mask = ~z_upper & u_upper
        down_mask = z_upper & ~u_upper
        ratio = torch.expm1(torch.where(both_upper_mask, h, zeros)) / torch.sigmoid(z)
        both_upper = torch.log1p(ratio)
        both_lower = h / self.alpha
        crossing_up = to_switch + torch.log1p(torch.expm1(torch.where(up_mask, h - room_below, zeros)) / self.alpha)
        crossing_down = to_switch + (h + room_above) / self.alpha
        return torch.where(
            both_upper_mask,
            both_upper,
            torch.where(up_mask, crossing_up, torch.where(down_mask, crossing_down, both_lower)),
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, lambda={self.lam:.10f}, beta={self.beta:.10f}, delta={self.delta:.10f}"


ACTIVATIONS: Dict[str, Callable[..., InvertibleActivation]] = {
    Identity.name: Identity,
    LeakyReLU.name: LeakyReLU,
    SmoothLeakyReLU.name: SmoothLeakyReLU,
}


def build_activation(name: str, **kwargs) -> InvertibleActivation:
    """Build an activation by its registry name (``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"activation={name!r} is not known; choose one of {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name](**kwargs)
