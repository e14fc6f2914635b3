"""Square layers orthogonal by construction (``lightning_gait.networks.orthogonal``).

The parametrization keeps every square layer's matrix (scaled) orthogonal whatever the
optimizer does, so GAIT-prop inverts it by its transpose (no LU, no penalty) and its
updates stay backprop's throughout training: checked after 100 training steps, float64,
both target forms, MLP and CNN, plain and scaled. Also: the network starts from the
plain network's weights, checkpoints and dtype changes keep it exact, ``fit`` stacks
``conf/variants/orthogonal.yaml``, resumes exactly and trains under DDP like one process.
"""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from lightning_gait import Backprop, GAITProp, InvertibleCNN, InvertibleMLP, fit
from lightning_gait.diagnostics import gradient_alignment
from lightning_gait.networks import (
    ORTHOGONAL_MAPS,
    OrthogonalInverse,
    OrthogonalMatrix,
    make_orthogonal,
    orthogonal_parametrization,
    orthogonality_surrogate,
)

from conftest import REPO_ROOT

CNN = dict(input_shape=(3, 8, 8), num_classes=10, channels=4, stages=2, patch=2, mixers=1, keep=3)


def make_net(kind: str, *, seed: int = 0, scaled: bool = False, orthogonal="cayley", dtype=torch.float64):
    torch.manual_seed(seed)
    if kind == "mlp":
        net = InvertibleMLP(48, width=24, depth=3, num_classes=10, orthogonal=orthogonal, orthogonal_scale=scaled)
    else:
        net = InvertibleCNN(**CNN, orthogonal=orthogonal, orthogonal_scale=scaled)
    return net.to(dtype)


def batches(kind: str, n: int, count: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    features = 48 if kind == "mlp" else 3 * 8 * 8
    return [(torch.rand(n, features, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g))
            for _ in range(count)]


def moved(net) -> None:
    """Generators, scales and biases away from their start, as after training."""
    with torch.no_grad():
        for layer in net.layers:
            mapping = orthogonal_parametrization(layer)
            if mapping is not None:
                layer.parametrizations.weight.original.normal_(0.0, 0.3)
                if mapping.log_scale is not None:
                    mapping.log_scale.fill_(0.4)
            layer.bias.normal_(0.0, 0.1)


# ---------------------------------------------------------------------- the parametrization
@pytest.mark.parametrize("mapping", ORTHOGONAL_MAPS)
@pytest.mark.parametrize("scaled", [False, True])
def test_the_matrix_is_scaled_orthogonal_for_any_parameter(mapping, scaled):
    torch.manual_seed(0)
    layer = make_orthogonal(torch.nn.Linear(12, 12).double(), mapping, scaled=scaled)
    with torch.no_grad():
        layer.parametrizations.weight.original.normal_(0.0, 1.0)
        if scaled:
            layer.parametrizations.weight[0].log_scale.fill_(-0.7)
    w = layer.weight
    s2 = math.exp(-1.4) if scaled else 1.0
    torch.testing.assert_close(w @ w.T, s2 * torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-13)


def test_only_square_layers_and_only_once():
    with pytest.raises(ValueError, match="square"):
        make_orthogonal(torch.nn.Linear(5, 4))
    layer = make_orthogonal(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="already"):
        make_orthogonal(layer)
    with pytest.raises(ValueError, match="orthogonal"):
        InvertibleMLP(8, width=8, depth=2, num_classes=4, orthogonal="householder")
    with pytest.raises(ValueError, match="orthogonal_scale"):
        InvertibleMLP(8, width=8, depth=2, num_classes=4, orthogonal_scale=True)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_network_starts_from_the_plain_networks_weights(kind):
    """Exactly in the dtype it is built in; in float64 (the float32 start made orthogonal to
    float64 precision by the conversion) to float32's round-off."""
    plain, built = make_net(kind, orthogonal=None, dtype=torch.float32), make_net(kind, dtype=torch.float32)
    assert built.orthogonal_layer_indices == built.square_layer_indices == list(range(1, built.num_layers))
    x, _ = batches(kind, 4, 1)[0]
    assert torch.equal(built(x.float()), plain(x.float()))
    torch.testing.assert_close(built.double()(x), plain.double()(x), rtol=0, atol=1e-5)
    # the penalty leaves them out: nothing to penalise
    assert built.orthogonality_terms() == []
    surrogate, value = orthogonality_surrogate(built)
    assert float(surrogate) == 0.0 and float(value) == 0.0


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("scaled", [False, True])
def test_the_inverse_is_the_transpose_and_exact(kind, scaled):
    net = make_net(kind, scaled=scaled)
    moved(net)
    x, _ = batches(kind, 8, 1)[0]
    trace = net.trace(x)
    for i in net.inverted_layer_indices:
        inverse = net.layer_inverse(i)
        assert isinstance(inverse, OrthogonalInverse) and inverse.singular is None
        recovered = net.invert_layer(i, trace.post[i])
        torch.testing.assert_close(recovered, trace.inputs[i], rtol=0, atol=1e-11, msg=f"layer {i + 1}")


def test_float32_start_is_made_orthogonal_in_float64():
    net = make_net("mlp", dtype=torch.float32).to(torch.float64)
    for i in net.orthogonal_layer_indices:
        w = net.view(i).matrix
        torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0], dtype=torch.float64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_checkpoints_keep_every_number(kind):
    net = make_net(kind, scaled=True)
    moved(net)
    state = net.state_dict()
    assert any(key.endswith("parametrizations.weight.original") for key in state)
    assert any(key.endswith("parametrizations.weight.0.base") for key in state)
    fresh = make_net(kind, scaled=True, seed=5)
    fresh.load_state_dict(state)
    x, _ = batches(kind, 4, 1)[0]
    assert torch.equal(fresh(x), net(x))


# ---------------------------------------------------------------------- GAIT-prop equals backprop
def _weight_space_updates(rule, x, y):
    """GAIT's update and backprop's gradient with respect to every layer's matrix W (the
    computed weight for an orthogonal layer), not its trained parameter."""
    net = rule.net
    with net.computed_weights():
        out = rule.local_objective(x, y)
        weights = [layer.weight for layer in net.layers]
        gait = torch.autograd.grad(out.objective, weights)
        loss = F.cross_entropy(net(x), y, reduction=rule.loss_reduction)
        bp = torch.autograd.grad(loss, weights)
    return gait, bp


def _trained(kind: str, target_mode: str, scaled: bool, steps: int):
    net = make_net(kind, scaled=scaled)
    if scaled:
        with torch.no_grad():
            for i in net.orthogonal_layer_indices:
                net.layers[i].parametrizations.weight[0].log_scale.fill_(0.1 * i)  # scales 1.1 .. 2
    rule = GAITProp(net, normalize=True, eta=1e-7, target_mode=target_mode, ortho_weight=0.0, lr=3e-3)
    optimizer = rule.configure_optimizers()
    for x, y in batches(kind, 16, steps):  # what training_step does: one backward of the objective, one step
        optimizer.zero_grad(set_to_none=True)
        rule.local_objective(x, y).objective.backward()
        optimizer.step()
    return rule


@pytest.mark.parametrize("kind, target_mode, scaled", [
    ("mlp", "absolute", False), ("mlp", "difference", False), ("cnn", "absolute", False),
    ("cnn", "difference", False), ("mlp", "absolute", True), ("cnn", "difference", True),
])
def test_gait_n_updates_equal_backprops_after_100_steps(kind, target_mode, scaled):
    """After 100 GAIT-N steps (float64) every layer's update correlates with backprop's at
    0.9999 or more: in the trained parameters and in the matrices W. Scaled layers give
    each layer's update a different positive factor, which the correlation ignores."""
    rule = _trained(kind, target_mode, scaled, steps=100)
    net = rule.net
    travelled = max(float(net.layers[i].parametrizations.weight.original.detach().abs().max())
                    for i in net.orthogonal_layer_indices)
    assert travelled > 0.05, "training must have moved the layers far from their start"
    x, y = batches(kind, 32, 1, seed=99)[0]
    rule.net.zero_grad(set_to_none=True)
    gait = [w for w, _ in rule.local_gradients(x, y)]
    loss = F.cross_entropy(net(x), y, reduction=rule.loss_reduction)
    bp = torch.autograd.grad(loss, [w for w, _ in net.layer_parameters()])
    for space, (ours, theirs) in {"trained parameters": (gait, bp),
                                  "matrices W": _weight_space_updates(rule, x, y)}.items():
        for layer, (a, b) in enumerate(zip(ours, theirs), start=1):
            corr = gradient_alignment(a, b)["corr"]
            assert corr >= 0.9999, f"{kind}, {target_mode}, scaled={scaled}: layer {layer} ({space}) r = {corr}"


def test_backprop_trains_the_same_parametrization():
    net = make_net("cnn")
    rule = Backprop(net, lr=1e-2)
    x, y = batches("cnn", 8, 1)[0]
    (gw, _), *_ = rule.local_gradients(x, y)[1:]
    assert gw.shape == net.layers[1].parametrizations.weight.original.shape and float(gw.abs().max()) > 0


# ---------------------------------------------------------------------- the CLI, resume, DDP
def tiny_data_args(root: Path) -> list:
    return ["--data.data_dir", str(root), "--data.verify_checksums", "false", "--data.val_size", "64"]


def _last(root: Path) -> dict:
    ckpts = sorted(root.rglob("last.ckpt"))
    assert ckpts, f"no last.ckpt under {root}"
    return torch.load(ckpts[0], map_location="cpu", weights_only=False)


@pytest.mark.parametrize("regime", ["gait_norm", "conv/gait_norm", "conv/bp"])
def test_the_variant_stacks_on_the_regimes(regime, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = fit._build_cli(["--config", regime, "--config", "variants/orthogonal", "--trainer.logger", "false",
                          "--trainer.default_root_dir", str(tmp_path)])
    net = cli.model.net
    assert cli.model.ortho_weight == 0.0
    assert net.orthogonal_layer_indices == net.square_layer_indices and net.orthogonal_layer_indices
    assert all(orthogonal_parametrization(net.layers[i]).orthogonal_map == "cayley"
               for i in net.orthogonal_layer_indices)
    scaled = fit._build_cli(["--config", regime, "--config", "variants/orthogonal_scaled", "--trainer.logger",
                             "false", "--trainer.default_root_dir", str(tmp_path)]).model.net
    assert all(isinstance(orthogonal_parametrization(scaled.layers[i]), OrthogonalMatrix)
               and orthogonal_parametrization(scaled.layers[i]).scaled for i in scaled.orthogonal_layer_indices)


def test_fit_resumes_exactly_with_orthogonal_layers(tiny_cifar_root, tmp_path, monkeypatch):
    """conv/gait_norm + variants/orthogonal: two epochs in one go == one epoch, stop, resume (float64)."""
    monkeypatch.chdir(tmp_path)
    common = ["--config", "conv/gait_norm", "--config", "variants/orthogonal_scaled", *tiny_data_args(tiny_cifar_root),
              "--model.init_args.net.init_args.channels", "4", "--data.batch_size", "64",
              "--trainer.logger", "false", "--test_after_fit", "false", "--trainer.precision", "64-true"]
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    assert fit.main([*common, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(straight)]) == 0
    assert fit.main([*common, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(first)]) == 0
    assert fit.main([*common, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(resumed),
                     "--ckpt_path", str(sorted(first.rglob("last.ckpt"))[0])]) == 0
    a, b, half = _last(straight), _last(resumed), _last(first)
    assert a["global_step"] == b["global_step"] == 2 * half["global_step"] > 0
    key = "net.layers.2.parametrizations.weight.original"
    assert key in a["state_dict"] and not torch.equal(a["state_dict"][key], half["state_dict"][key])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        if value.is_floating_point():
            assert value.dtype == torch.float64, name
            torch.testing.assert_close(b["state_dict"][name], value, rtol=0, atol=1e-12, msg=name)


WORKER = Path(__file__).with_name("orthogonal_ddp_worker.py")


def _load_worker():
    spec = importlib.util.spec_from_file_location("orthogonal_ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["cnn_scaled", "mlp"])
@pytest.mark.e2e  # two processes, twice
def test_ddp_trains_like_one_process(kind, tmp_path):
    """Two CPU ranks (gloo) started from different weights end bitwise equal, and equal to
    one process on the union of their batches (1e-10)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    for devices in (2, 1):
        out = tmp_path / f"devices{devices}"
        out.mkdir()
        done = subprocess.run([sys.executable, str(WORKER), str(out), kind, "--devices", str(devices)], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    worker = _load_worker()
    rank0, rank1 = (torch.load(tmp_path / "devices2" / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "devices1" / "rank0.pt")
    assert rank0["global_step"] == rank1["global_step"] == single["global_step"] == worker.STEPS
    start = worker.make_rule(kind, seed=0).net.state_dict()
    for name, value in single["state"].items():
        assert torch.equal(rank0["state"][name], rank1["state"][name]), name
        torch.testing.assert_close(rank0["state"][name], value, rtol=0, atol=1e-10, msg=name)
    assert not torch.equal(single["state"]["layers.1.parametrizations.weight.original"],
                           start["layers.1.parametrizations.weight.original"].double())
