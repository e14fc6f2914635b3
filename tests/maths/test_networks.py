"""InvertibleMLP: structure, init, exact inverse of each square layer, orthogonality penalty."""
from __future__ import annotations


import pytest
import torch

from lightning_gait import InvertibleMLP
from lightning_gait.networks import orthogonality_penalty, orthogonality_surrogate
from _helpers import default_dtype


def build64(seed: int = 0, **kwargs) -> InvertibleMLP:
    """A network whose orthogonal init is computed in float64."""
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        kwargs.setdefault("num_classes", 10)
        kwargs.setdefault("in_features", 3072)
        return InvertibleMLP(**kwargs)


def perturb(net: InvertibleMLP, scale: float = 0.3, seed: int = 0) -> None:
    """Move weights and biases away from the orthogonal init (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            w = layer.weight
            w.add_(scale * torch.randn(w.shape, generator=g, dtype=w.dtype) / w.shape[1] ** 0.5)
            layer.bias.add_(0.1 * torch.randn(layer.bias.shape, generator=g, dtype=w.dtype))


# ---------------------------------------------------------------- structure
def test_paper_defaults_and_layer_shapes():
    net = InvertibleMLP(in_features=3072, num_classes=10)
    assert (net.in_features, net.width, net.depth, net.num_classes) == (3072, 500, 6, 10)
    assert isinstance(net.layers, torch.nn.ModuleList) and len(net.layers) == 7
    assert all(isinstance(layer, torch.nn.Linear) for layer in net.layers)
    assert net.layers[0].weight.shape == (500, 3072)
    assert all(layer.weight.shape == (500, 500) for layer in net.layers[1:])
    assert net.square_layer_indices == [1, 2, 3, 4, 5, 6]
    assert net.invertible


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_depth_counts_hidden_layers(depth):
    net = InvertibleMLP(in_features=12, width=16, depth=depth, num_classes=3)
    assert len(net.layers) == depth + 1
    assert net.square_layer_indices == list(range(1, depth + 1))
    assert type(net.activation_of(depth)).__name__ == "Identity"
    assert all(net.activation_of(i) is net.activation for i in range(depth))


def test_plain_output_layer_for_the_backprop_baseline():
    net = InvertibleMLP(in_features=12, width=16, depth=3, num_classes=3, square_output=False)
    assert net.layers[-1].weight.shape == (3, 16)
    assert not net.invertible
    assert net.square_layer_indices == [1, 2]
    assert net(torch.rand(5, 12)).shape == (5, 3)
    with pytest.raises(ValueError, match="square"):
        net.layer_inverse(3)


def test_forward_returns_logits_and_flattens_images_row_major():
    net = build64(in_features=3 * 4 * 4, width=20, depth=2, num_classes=10)
    images = torch.rand(6, 3, 4, 4, dtype=torch.float64)
    logits = net(images)
    assert logits.shape == (6, 10)
    torch.testing.assert_close(logits, net(images.reshape(6, -1)), rtol=0, atol=0)
    # the same as the first num_classes units of the output layer of a traced pass
    trace = net.trace(images)
    torch.testing.assert_close(logits, trace.output[:, :10], rtol=0, atol=0)
    assert len(trace.inputs) == len(trace.pre) == len(trace.post) == 3
    with pytest.raises(ValueError, match="in_features"):
        net(torch.rand(6, 47, dtype=torch.float64))


def test_local_trace_detaches_layer_inputs():
    net = build64(in_features=8, width=12, depth=2, num_classes=4)
    trace = net.trace(torch.rand(3, 8, dtype=torch.float64), local=True)
    grads = torch.autograd.grad(trace.post[2].sum(), [p for layer in net.layers for p in layer.parameters()], allow_unused=True)
    assert grads[0] is None and grads[2] is None  # layers 1 and 2 are not reached
    assert grads[4] is not None and grads[5] is not None


# ---------------------------------------------------------------- init
def test_init_is_orthogonal_with_zero_biases():
    net = build64(seed=3, in_features=3072, num_classes=10)
    for i, layer in enumerate(net.layers):
        w = layer.weight
        eye = torch.eye(w.shape[0], dtype=w.dtype)
        # square layers orthogonal, layer 1 semi-orthogonal (orthonormal rows)
        assert (w @ w.T - eye).abs().max().item() <= 1e-12, f"layer {i + 1}"
        assert torch.count_nonzero(layer.bias) == 0
    assert orthogonality_penalty(net).item() <= 1e-20


# ---------------------------------------------------------------- exact inverse
@pytest.mark.parametrize("activation", ["leaky_relu", "smooth_leaky_relu", "identity"])
@pytest.mark.parametrize("perturbed", [False, True], ids=["orthogonal", "perturbed"])
def test_each_square_layer_inverts_its_forward(activation, perturbed):
    """``G_l(F_l(a)) == a`` to 1e-10 for every square layer, at the paper's width 500."""
    net = build64(seed=1, in_features=64, width=500, depth=3, num_classes=10, activation=activation)
    if perturbed:
        perturb(net)
    x = torch.rand(128, 64, dtype=torch.float64)
    trace = net.trace(x)
    assert net.square_layer_indices == [1, 2, 3]
    for i in net.square_layer_indices:
        a = trace.inputs[i]
        forward = net.activation_of(i)(net.layers[i](a))
        torch.testing.assert_close(forward, trace.post[i], rtol=0, atol=0)
        recovered = net.invert_layer(i, forward)
        err = (recovered - a).abs().max().item()
        assert err <= 1e-10, f"layer {i + 1}: max |G(F(a)) - a| = {err:.2e} (float64)"


def test_layer_inverse_solves_against_the_weight():
    net = build64(seed=2, in_features=10, width=40, depth=2, num_classes=4)
    perturb(net, scale=0.5)
    r = torch.randn(7, 40, dtype=torch.float64)
    for i in net.square_layer_indices:
        x = net.layer_inverse(i).solve(r)
        torch.testing.assert_close(x @ net.layers[i].weight.T, r, rtol=0, atol=1e-12)


def test_layer_1_is_never_inverted():
    net = InvertibleMLP(in_features=12, width=16, depth=2, num_classes=3)
    with pytest.raises(ValueError, match="layer 1"):
        net.layer_inverse(0)


# ---------------------------------------------------------------- orthogonality penalty
def test_orthogonality_penalty_and_surrogate():
    net = build64(seed=4, in_features=10, width=24, depth=3, num_classes=4)
    perturb(net)
    square = [net.layers[i].weight for i in net.square_layer_indices]
    expected = sum(((w @ w.T - torch.eye(24, dtype=w.dtype)) ** 2).sum() for w in square)
    penalty = orthogonality_penalty(net)
    torch.testing.assert_close(penalty, expected)
    assert penalty.item() > 0.1
    grads = torch.autograd.grad(penalty, square)
    surrogate, value = orthogonality_surrogate(net)
    torch.testing.assert_close(value, expected)
    surrogate_grads = torch.autograd.grad(surrogate, square)
    for g, s in zip(grads, surrogate_grads):
        torch.testing.assert_close(s, g, rtol=1e-12, atol=1e-12)
    # layer 1 is not penalized
    assert torch.autograd.grad(surrogate, net.layers[0].weight, allow_unused=True)[0] is None


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(activation="relu"), "activation"),
        (dict(activation="tanh"), "activation"),
        (dict(depth=0), "depth"),
        (dict(depth=-2), "depth"),
        (dict(width=8, num_classes=10), "width"),
        (dict(in_features=0), "in_features"),
        (dict(num_classes=0), "num_classes"),
        (dict(in_features=None), "in_features"),  # None: the CLI fills it from the data
        (dict(num_classes=None), "num_classes"),
        (dict(width=0), "width"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, argument):
    options = dict(in_features=12, width=16, depth=2, num_classes=3) | kwargs
    with pytest.raises(ValueError, match=argument):
        InvertibleMLP(**options)


def test_narrow_width_is_fine_without_a_square_output():
    net = InvertibleMLP(in_features=12, width=8, depth=2, num_classes=10, square_output=False)
    assert net(torch.rand(2, 12)).shape == (2, 10)


def test_solve_affine_takes_the_bias_off_the_rows_whatever_the_tensor_shape():
    """A dense layer on (N, L, n) input: the bias belongs to the last dimension, also when L == n."""
    from lightning_gait.networks.layers import layer_inverse

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 4).double()
    x = torch.randn(2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        recovered = layer_inverse(layer).solve_affine(layer(x))
    torch.testing.assert_close(recovered, x, rtol=0, atol=1e-12)


def test_config_listing_without_a_conf_folder(tmp_path):
    from lightning_gait.configs import regime_groups

    assert regime_groups(tmp_path / "absent") == {}
