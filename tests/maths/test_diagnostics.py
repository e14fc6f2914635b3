"""The diagnostics math (lightning_gait.diagnostics): float64 metrics, backprop gradients, sanity numbers.

Every measurement here is float64 unless a test says otherwise.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_gait import Backprop, GAITProp, InvertibleMLP
from lightning_gait.diagnostics import (
    alignment_at_init,
    alignment_metrics,
    backprop_gradients,
    condition_number,
    gradient_alignment,
    orthogonality_deviation,
    orthogonality_metrics,
    rule_alignment,
    summarize,
    target_metrics,
    warn_nonfinite,
)

# small but deep enough for the paper's effect: 7 layers, as 3072 -> 6 x 500
IN, WIDTH, DEPTH, BATCH = 96, 64, 6, 64


def make_batch(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, IN, generator=g, dtype=dtype), torch.randint(0, 10, (BATCH,), generator=g)


def make_net(dtype=torch.float64, seed=1):
    torch.manual_seed(seed)
    return InvertibleMLP(IN, WIDTH, DEPTH, 10).to(dtype)


# ---------------------------------------------------------------- metric math
def test_alignment_matches_numpy_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=500) + 0.3
    b = 0.7 * a + rng.normal(size=500)
    m = gradient_alignment(torch.tensor(a), torch.tensor(b))
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert m["corr"] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-14)
    assert m["cos"] == pytest.approx(cos, abs=1e-14)
    assert m["angle"] == pytest.approx(np.degrees(np.arccos(cos)), abs=1e-10)
    assert m["norm_ratio"] == pytest.approx(np.linalg.norm(a) / np.linalg.norm(b), rel=1e-14)


def test_alignment_is_computed_in_float64_from_float32_inputs():
    # a large common offset: Pearson in float32 arithmetic would lose the small variations
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, generator=g)
    a32 = (1000.0 + noise).to(torch.float32)
    b32 = (1000.0 + noise + 0.1 * torch.randn(4000, generator=g)).to(torch.float32)
    m = gradient_alignment(a32, b32)
    a, b = a32.double().numpy(), b32.double().numpy()
    assert m["corr"] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert m["corr"] < 0.999  # the offset does not fake a perfect correlation


def test_cosine_and_correlation_are_clamped_and_angles_exact_at_the_ends():
    v = torch.randn(1000, dtype=torch.float64) * 1e-3 + 0.1
    same = gradient_alignment(v, v.clone())
    assert -1.0 <= same["cos"] <= 1.0 and -1.0 <= same["corr"] <= 1.0
    assert same["cos"] == pytest.approx(1.0, abs=1e-15) and same["corr"] == pytest.approx(1.0, abs=1e-15)
    opposite = gradient_alignment(v, -3.0 * v)
    assert opposite["cos"] == pytest.approx(-1.0, abs=1e-15)
    assert opposite["angle"] == pytest.approx(180.0, abs=1e-5)
    assert opposite["norm_ratio"] == pytest.approx(1 / 3, rel=1e-14)


def test_zero_gradient_gives_nan_never_a_number():
    v = torch.randn(100, dtype=torch.float64)
    m = gradient_alignment(v, torch.zeros(100, dtype=torch.float64))
    assert math.isnan(m["corr"]) and math.isnan(m["cos"]) and math.isnan(m["angle"])
    assert math.isinf(m["norm_ratio"])
    constant = gradient_alignment(torch.full((100,), 2.0), v)
    assert math.isnan(constant["corr"]) and not math.isnan(constant["cos"])
    with pytest.warns(RuntimeWarning, match="bp_corr/layer_1"):
        bad = warn_nonfinite({"bp_corr/layer_1": m["corr"], "bp_corr/layer_2": 0.5})
    assert bad == ["bp_corr/layer_1"]


def test_mismatched_layers_raise_value_error():
    with pytest.raises(ValueError, match="same layer"):
        gradient_alignment(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="layers"):
        alignment_metrics([(torch.zeros(2), None)], [])
    with pytest.raises(ValueError, match="loss_reduction"):
        backprop_gradients(make_net(), *make_batch(), loss_reduction="avg")


# ---------------------------------------------------------------- backprop gradients
def test_backprop_gradients_equal_backward_and_leave_grad_untouched():
    net = make_net()
    x, y = make_batch()
    weights = [p.detach().clone() for p in net.parameters()]
    grads = backprop_gradients(net, x, y, loss_reduction="sum")
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), weights))

    reference = make_net()
    reference.load_state_dict(net.state_dict())
    torch.nn.functional.cross_entropy(reference(x), y, reduction="sum").backward()
    for (dw, db), layer in zip(grads, reference.layers):
        torch.testing.assert_close(dw, layer.weight.grad, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(db, layer.bias.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backprop_against_itself_correlates_at_every_layer(dtype):
    rule = Backprop(make_net(dtype))
    x, y = make_batch(dtype)
    metrics = rule_alignment(rule, x, y)
    for k in range(1, DEPTH + 2):
        assert metrics[f"bp_corr/layer_{k}"] >= 0.999999, (k, dtype)
        assert metrics[f"bp_cos/layer_{k}"] >= 0.999999
        assert metrics[f"bp_norm_ratio/layer_{k}"] == pytest.approx(1.0, abs=1e-5)
    assert all(p.grad is None for p in rule.parameters())


# ---------------------------------------------------------------- the paper's numbers (Fig. 2B setting)
def test_gait_normalized_float64_matches_backprop_at_init():
    rule = GAITProp(make_net(), normalize=True, eta=1e-7)
    x, y = make_batch()
    values = alignment_at_init(rule, x, y, num_networks=3)
    for k in range(1, DEPTH + 2):
        corr = values[f"bp_corr/layer_{k}"]
        assert corr.shape == (3,)
        assert bool((corr >= 0.9999).all()), (k, corr)


def test_gait_fixed_gamma_float64_drops_near_the_input():
    x, y = make_batch()
    paper = summarize(alignment_at_init(GAITProp(make_net(), gamma=1e-3), x, y, num_networks=3))
    exact = summarize(alignment_at_init(GAITProp(make_net(), gamma=1e-3, target_mode="difference"), x, y, num_networks=3))
    # paper form: the target difference shrinks as gamma^k and is lost to round-off near the input
    assert paper["bp_corr/layer_1"][0] < 0.5
    assert paper["bp_corr/layer_2"][0] < 0.5
    for k in range(4, DEPTH + 2):
        assert paper[f"bp_corr/layer_{k}"][0] >= 0.9999, k
    # the same algorithm propagating the difference itself keeps every layer aligned
    for k in range(1, DEPTH + 2):
        assert exact[f"bp_corr/layer_{k}"][0] >= 0.9999, k


def test_alignment_at_init_restores_the_rule_and_varies_the_networks():
    rule = GAITProp(make_net(), gamma=1e-3)
    x, y = make_batch()
    rule.local_gradients(x, y)
    before = [p.detach().clone() for p in rule.parameters()]
    diagnostics = rule.last_diagnostics
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    values = alignment_at_init(rule, x, y, num_networks=3, seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # caller's RNG untouched
    assert all(torch.equal(p, b) for p, b in zip(rule.parameters(), before))
    assert rule.last_diagnostics is diagnostics
    assert len(set(values["bp_corr/layer_1"].tolist())) == 3  # three different networks
    again = alignment_at_init(rule, x, y, num_networks=3, seed=5)
    torch.testing.assert_close(again["bp_corr/layer_1"], values["bp_corr/layer_1"], rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="num_networks"):
        alignment_at_init(rule, x, y, num_networks=0)


# ---------------------------------------------------------------- targets
def test_target_metrics_fixed_gamma():
    rule = GAITProp(make_net(), gamma=1e-3)
    x, y = make_batch()
    rule.local_gradients(x, y)
    trace = rule.last_diagnostics
    m = target_metrics(trace)
    layers = DEPTH + 1
    assert "gamma/layer_1" not in m  # layer 1 is never inverted: no gamma there
    for k in range(1, layers + 1):
        e = trace.differences[k - 1]
        assert m[f"target_norm/layer_{k}"] == pytest.approx(float(e.norm(dim=1).mean()), rel=1e-12)
        # m_l = prod of 1/gamma over the layers above: log10 = 3 per layer
        assert m[f"log10_multiplier/layer_{k}"] == pytest.approx(3.0 * (layers - k), abs=1e-9)
        assert m[f"log10_multiplier_min/layer_{k}"] == pytest.approx(m[f"log10_multiplier_max/layer_{k}"], abs=1e-9)
    for k in range(2, layers + 1):
        assert m[f"gamma/layer_{k}"] == m[f"gamma_min/layer_{k}"] == m[f"gamma_max/layer_{k}"] == 1e-3


def test_target_metrics_normalized_gamma_is_per_sample():
    eta = 1e-7
    rule = GAITProp(make_net(), normalize=True, eta=eta)
    x, y = make_batch()
    rule.local_gradients(x, y)
    trace = rule.last_diagnostics
    m = target_metrics(trace)
    for k in range(2, DEPTH + 2):
        e = trace.differences[k - 1]
        expected = eta * math.sqrt(e.shape[1]) / e.norm(dim=1)  # eq. 5, plain norm
        assert m[f"gamma/layer_{k}"] == pytest.approx(float(expected.mean()), rel=1e-9)
        assert m[f"gamma_min/layer_{k}"] == pytest.approx(float(expected.min()), rel=1e-9)
        assert m[f"gamma_max/layer_{k}"] == pytest.approx(float(expected.max()), rel=1e-9)
        assert m[f"gamma_min/layer_{k}"] < m[f"gamma_max/layer_{k}"]
    assert m["log10_multiplier_min/layer_1"] < m["log10_multiplier_max/layer_1"]


# ---------------------------------------------------------------- orthogonality
def test_orthogonality_and_condition_number():
    q, _ = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64))
    assert orthogonality_deviation(q) < 1e-13
    assert condition_number(q) == pytest.approx(1.0, abs=1e-12)
    # (2Q)(2Q)^T - I = 3I: ||3I||_F / sqrt(n) = 3
    assert orthogonality_deviation(2.0 * q) == pytest.approx(3.0, rel=1e-12)
    d = torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64))
    assert condition_number(q @ d) == pytest.approx(50.0, rel=1e-10)
    assert condition_number(q.float()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="square"):
        orthogonality_deviation(torch.zeros(3, 4))


def test_orthogonality_metrics_cover_the_square_layers_only():
    net = make_net()
    m = orthogonality_metrics(net)
    expected = {f"{f}/layer_{k}" for f in ("ortho", "cond") for k in range(2, DEPTH + 2)}
    assert set(m) == expected
    assert all(v < 1e-5 for k, v in m.items() if k.startswith("ortho/"))
    with torch.no_grad():
        net.layers[3].weight.mul_(1.5)
    assert orthogonality_metrics(net)["ortho/layer_4"] == pytest.approx(1.25, rel=1e-4)
    assert set(orthogonality_metrics(net, condition=False)) == {f"ortho/layer_{k}" for k in range(2, DEPTH + 2)}
