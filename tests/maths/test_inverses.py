"""Layer-inverse strategies: the cached inverse against the exact LU, alone and in training.

All float64. The bound checked through training (1e-6 relative, per layer, weights) is
the one documented for ``inverse="cached"`` in ``benchmarks/README.md``.
"""
from __future__ import annotations

import pytest
import torch

from lightning_gait import GAITProp, InvertibleMLP
from lightning_gait.inverses import (
    CachedInverse,
    ExactInverse,
    MatrixInverse,
    build_inverse_strategy,
)

DOCUMENTED_BOUND = 1e-6


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).norm() / b.detach().norm())


def perturbed_orthogonal(n: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(n, n, dtype=torch.float64)
    torch.nn.init.orthogonal_(w, generator=g)
    return w + scale * torch.randn(n, n, generator=g, dtype=torch.float64)


def spectral(m: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(m, 2))


def test_exact_and_cached_solve_the_same_system():
    net = InvertibleMLP(in_features=12, width=16, depth=3, num_classes=4).double()
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.add_(0.05 * torch.randn_like(layer.weight))
    r = torch.randn(9, 16, dtype=torch.float64)
    exact = ExactInverse().layer_inverses(net)
    cached = CachedInverse().layer_inverses(net)
    assert exact[0] is None and cached[0] is None
    for i in range(1, net.num_layers):
        x = cached[i].solve(r)
        # the defining property: X W = r with W = weight^T
        assert relative(x @ net.layers[i].weight.T, r) < 1e-12
        assert relative(x, exact[i].solve(r)) < 1e-12


def test_newton_schulz_step_squares_the_residual():
    n = 40
    w_old = perturbed_orthogonal(n, 0.05, seed=1)
    weight = (w_old + 1e-3 * torch.randn(n, n, dtype=torch.float64)).clone()
    stale = torch.linalg.inv(w_old).T  # inverse of the old W = w_old^T
    before = torch.eye(n, dtype=torch.float64) - weight.T @ stale
    updated, frobenius = CachedInverse()._newton_schulz(weight, stale)
    after = torch.eye(n, dtype=torch.float64) - weight.T @ updated
    assert frobenius == pytest.approx(float(torch.linalg.matrix_norm(before)), rel=1e-12)
    assert spectral(before) > 1e-4  # the stale inverse is really off
    assert spectral(after) <= spectral(before) ** 2 * (1 + 1e-6) + 1e-14
    assert torch.allclose(after, before @ before, atol=1e-13)


def test_iterative_refinement_multiplies_the_error_by_the_residual():
    n = 40
    w_old = perturbed_orthogonal(n, 0.05, seed=2)
    weight = w_old + 1e-3 * torch.randn(n, n, dtype=torch.float64)
    stale = torch.linalg.inv(w_old).T
    residual = spectral(torch.eye(n, dtype=torch.float64) - weight.T @ stale)
    r = torch.randn(7, n, dtype=torch.float64)
    exact = torch.linalg.solve(weight.T, r, left=False)
    err0 = relative(MatrixInverse(stale, weight, 0).solve(r), exact)
    err1 = relative(MatrixInverse(stale, weight, 1).solve(r), exact)
    err2 = relative(MatrixInverse(stale, weight, 2).solve(r), exact)
    assert err0 > 1e-5
    assert err1 <= residual * err0 * (1 + 1e-6)
    assert err2 <= residual * err1 * (1 + 1e-6) + 1e-14


def test_cached_inverse_recomputes_after_a_jump():
    net = InvertibleMLP(in_features=8, width=12, depth=2, num_classes=3).double()
    strategy = CachedInverse(max_residual=0.05)
    strategy.layer_inverses(net)
    assert strategy.exact_refreshes == net.num_layers - 1
    other = InvertibleMLP(in_features=8, width=12, depth=2, num_classes=3).double()
    net.load_state_dict(other.state_dict())  # in-place copy: a jump, not a small step
    solvers = strategy.layer_inverses(net)
    assert strategy.exact_refreshes == 2 * (net.num_layers - 1)
    r = torch.randn(5, 12, dtype=torch.float64)
    for i in range(1, net.num_layers):
        assert relative(solvers[i].solve(r) @ net.layers[i].weight.T, r) < 1e-12
    # unchanged weights: nothing to do, the same matrices come back
    again = strategy.layer_inverses(net)
    assert strategy.exact_refreshes == 2 * (net.num_layers - 1)
    assert all(again[i].inverse is solvers[i].inverse for i in range(1, net.num_layers))


def test_cached_inverse_follows_a_dtype_change():
    net = InvertibleMLP(in_features=8, width=12, depth=2, num_classes=3)
    strategy = CachedInverse()
    assert strategy.layer_inverses(net)[1].inverse.dtype == torch.float32
    net.double()
    assert strategy.layer_inverses(net)[1].inverse.dtype == torch.float64


def _installed_updates(rule, x, y):
    return [gw for gw, _ in rule.local_gradients(x, y)]


def test_cached_updates_match_exact_ones_through_training():
    """Along the cached rule's own 100-step trajectory (Adam, the paper's lr scaled up 5x so
    that the weights move faster than in the real setting), every layer's update stays
    within the documented bound of the exact-inverse update at the same weights; the same
    inverse left uncorrected for one step would not."""
    torch.manual_seed(0)
    net = InvertibleMLP(in_features=48, width=40, depth=4, num_classes=5).double()
    rule = GAITProp(net, normalize=True, target_mode="difference", inverse="cached", ortho_weight=0.0,
                    lr=1e-4)
    exact_rule = GAITProp(net, normalize=True, target_mode="difference", ortho_weight=0.0)
    optimizer = rule.configure_optimizers()
    g = torch.Generator().manual_seed(1)
    data = torch.rand(10, 64, 48, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (10, 64), generator=g)
    worst = 0.0
    stale_errors = []
    for step in range(100):
        x, y = data[step % 10], labels[step % 10]
        previous = {i: entry[0] for i, entry in rule.inverse_strategy._cache.items()}
        grads = rule.local_gradients(x, y)
        exact = exact_rule.local_gradients(x, y)
        worst = max(worst, max(relative(a[0], b[0]) for a, b in zip(grads, exact)))
        if step in (10, 90) and previous:
            # the inverse from the previous step, used without correction
            stale = [None] + [MatrixInverse(previous[i], net.layers[i].weight.detach(), 0)
                              for i in range(1, net.num_layers)]
            rule.layer_inverses = lambda: stale
            try:
                uncorrected = rule.local_gradients(x, y)
            finally:
                del rule.layer_inverses
            stale_errors.append(max(relative(a[0], b[0]) for a, b in zip(uncorrected, exact)))
        optimizer.zero_grad(set_to_none=True)
        for (gw, gb), layer in zip(grads, net.layers):
            layer.weight.grad, layer.bias.grad = gw, gb
        optimizer.step()
    assert rule.inverse_strategy.exact_refreshes == net.num_layers - 1  # only the first step
    assert worst <= DOCUMENTED_BOUND
    assert min(stale_errors) > 100 * worst  # the correction is what keeps the bound


def test_cached_inverse_needs_the_difference_form():
    net = InvertibleMLP(in_features=8, width=12, depth=2, num_classes=3).double()
    with pytest.raises(ValueError, match="inverse"):
        GAITProp(net, inverse="cached")  # target_mode="absolute" by default
    with pytest.raises(ValueError, match="inverse"):
        GAITProp(net, inverse="pseudo", target_mode="difference")
    rule = GAITProp(net, inverse="cached", target_mode="difference")
    assert isinstance(rule.inverse_strategy, CachedInverse)
    assert isinstance(GAITProp(net).inverse_strategy, ExactInverse)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"newton_steps": -1}, "newton_steps"),
        ({"refinements": 1.5}, "refinements"),
        ({"newton_steps": 0, "refinements": 0}, "newton_steps"),
        ({"refresh_every": 0}, "refresh_every"),
        ({"newton_steps": 0, "refinements": 1}, "refresh_every"),
        ({"max_residual": 0.0}, "max_residual"),
    ],
)
def test_cached_inverse_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CachedInverse(**kwargs)


def test_build_inverse_strategy():
    assert isinstance(build_inverse_strategy("lu"), ExactInverse)
    assert isinstance(build_inverse_strategy(None), ExactInverse)
    custom = CachedInverse(refinements=1)
    assert build_inverse_strategy(custom) is custom
    with pytest.raises(ValueError, match="inverse"):
        build_inverse_strategy("qr")


def _residual(weight, inverse):
    eye = torch.eye(weight.shape[0], dtype=weight.dtype)
    return float(torch.linalg.matrix_norm(eye - weight.T @ inverse))


def test_cached_inverse_corrects_again_after_a_failed_correction():
    """If a correction raises mid-way, the weights are not marked as seen: the next call
    with the same weights corrects instead of returning the stale inverse."""
    torch.manual_seed(0)
    net = InvertibleMLP(in_features=8, width=12, depth=2, num_classes=3).double()
    weight = net.layers[1].weight
    strategy = CachedInverse()
    strategy.inverse_of(1, weight.detach())
    with torch.no_grad():
        weight.add_(1e-3 * torch.randn_like(weight))
    stale = _residual(weight.detach(), strategy._cache[1][0])
    assert stale > 1e-4

    def fail(*args):
        raise RuntimeError("simulated failure")

    strategy._newton_schulz = fail
    with pytest.raises(RuntimeError, match="simulated"):
        strategy.inverse_of(1, weight.detach())
    del strategy._newton_schulz  # back to the method
    corrected = strategy.inverse_of(1, weight.detach())
    # one Newton-Schulz step: ||I - W M_new||_F = ||E^2||_F <= ||E||_F^2
    assert _residual(weight.detach(), corrected) <= stale**2 * (1 + 1e-9)


def test_cached_inverse_state_and_pickling():
    """state_bytes counts each layer's inverse and weight copy; a pickle (as in checkpoint
    hyperparameters) leaves the cache out and the copy recomputes it exactly."""
    import pickle

    net = InvertibleMLP(in_features=8, width=12, depth=3, num_classes=3).double()
    strategy = CachedInverse()
    strategy.layer_inverses(net)
    square = len(net.square_layer_indices)
    assert strategy.state_bytes() == square * 2 * 12 * 12 * 8
    clone = pickle.loads(pickle.dumps(strategy))
    assert clone.state_bytes() == 0 and clone.newton_steps == strategy.newton_steps
    again = clone.layer_inverses(net)[1].inverse
    assert _residual(net.layers[1].weight.detach(), again) < 1e-12
