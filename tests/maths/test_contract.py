"""The network contract: a network defined outside the package trains with every rule.

``tests/contract_net.py`` holds ``PatchMixNet`` (4-D hidden activations, two layer types
the library does not know, registered there). Nothing in the library names it.
"""
from __future__ import annotations

import csv

import pytest
import torch

from conftest import REPO_ROOT
from contract_net import PatchMixNet
from lightning_gait import Backprop, FeedbackAlignment, GAITProp, TargetProp, fit
from lightning_gait.diagnostics import backprop_gradients, rule_alignment

SHAPE = (3, 32, 32)


def make_net(seed: int = 0, **kwargs) -> PatchMixNet:
    torch.manual_seed(seed)
    return PatchMixNet(SHAPE, 10, **kwargs).double()


def batch(n: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def test_hidden_activations_are_four_dimensional_and_layers_invert_exactly():
    net = make_net()
    x, _ = batch()
    trace = net.trace(x)
    assert trace.post[1].dim() == 4 and trace.post[-1].dim() == 2
    assert net.invertible and net.inverted_layer_indices == [1, 2, 3]
    for i in net.inverted_layer_indices:
        recovered = net.invert_layer(i, trace.post[i])
        assert torch.allclose(recovered, trace.inputs[i], rtol=0, atol=1e-10), f"layer {i + 1}"


def test_backprop_updates_equal_autograd():
    net = make_net()
    x, y = batch()
    rule = Backprop(net).double()
    loss = torch.nn.functional.cross_entropy(net(x), y, reduction="sum")
    params = [p for pair in net.layer_parameters() for p in pair]
    expected = torch.autograd.grad(loss, params)
    got = [g for pair in rule.local_gradients(x, y) for g in pair]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    reference = backprop_gradients(net, x, y)
    torch.testing.assert_close(reference[1][0], expected[2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["leaky_relu", "smooth_leaky_relu"])
@pytest.mark.parametrize("target_mode", ["absolute", "difference"])
def test_gait_n_matches_backprop_at_initialisation(activation, target_mode):
    """Orthogonal weights, float64, eta 1e-7: correlation with backprop >= 0.9999 at every layer."""
    for seed in range(3):
        rule = GAITProp(make_net(seed, activation=activation), normalize=True, eta=1e-7,
                        target_mode=target_mode).double()
        x, y = batch(seed=seed + 10)
        metrics = rule_alignment(rule, x, y)
        corr = [metrics[f"bp_corr/layer_{k}"] for k in range(1, rule.net.num_layers + 1)]
        assert min(corr) >= 0.9999, (seed, corr)


def test_feedback_matrices_have_the_layer_matrix_shape():
    net = make_net()
    rule = FeedbackAlignment(net).double()
    assert rule.feedback(1).shape == (8, 8) and rule.feedback(3).shape == net.layers[3].weight.shape
    x, y = batch()
    updates = rule.local_gradients(x, y)
    assert all(torch.isfinite(w).all() and w.abs().sum() > 0 for w, _ in updates)


def test_target_prop_targets_keep_the_layer_shapes():
    rule = TargetProp(make_net()).double()
    x, y = batch()
    rule.local_gradients(x, y)
    trace = rule.last_diagnostics
    assert trace.differences[1].shape == (32, 8, 8, 8)


NET_CONFIG = """
model:
  init_args:
    net:
      class_path: contract_net.PatchMixNet
      init_args:
        channels: 4
        patch: 8
"""

RULE_CASES = {
    "bp": ["--config", "conf/bp.yaml"],
    "gait_norm": ["--config", "conf/gait_norm.yaml"],
    "gait_norm_difference": ["--config", "conf/gait_norm.yaml", "--model.init_args.target_mode", "difference"],
    "tp": ["--config", "conf/tp.yaml"],
    "fa": ["--config", "conf/fa.yaml"],
}


@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_every_rule_trains_it_from_the_cli(case, tiny_cifar_root, tmp_path, monkeypatch, repo_root):
    """By class_path, sized by the DataModule, with the configs' diagnostics callbacks (which
    measure at step 0) on every layer."""
    monkeypatch.chdir(repo_root)
    net_config = tmp_path / "net.yaml"
    net_config.write_text(NET_CONFIG)
    code = fit.main([
        *RULE_CASES[case], "--config", str(net_config),
        "--data.data_dir", str(tiny_cifar_root), "--data.verify_checksums", "false", "--data.val_size", "64",
        "--model.init_args.lr", "1e-3",
        "--trainer.max_steps", "6", "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(tmp_path), "--trainer.logger.name", "run",
        "--test_after_fit", "false",
    ])
    assert code == 0
    rows = list(csv.DictReader(open(next(tmp_path.glob("run/*/metrics.csv")))))
    logged = {k for row in rows for k, v in row.items() if v not in ("", None)}
    assert {f"bp_corr/layer_{k}" for k in range(1, 5)} <= logged
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert {"ortho/layer_2", "ortho/layer_4"} <= logged


def _readme_example_module():
    """docs/extending.md's "Bring your own network and data" code blocks, as module ``mypackage``."""
    import re
    import sys
    import types

    text = (REPO_ROOT / "docs" / "extending.md").read_text()
    section = text.split("### Bring your own network and data", 1)[1].split("\n##", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    commands = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2 and len(commands) == 1
    module = types.ModuleType("mypackage")
    sys.modules["mypackage"] = module
    for block in blocks:
        exec(compile(block, "docs/extending.md", "exec"), module.__dict__)
    return module, commands[0]


def test_readme_example_network_and_data_train_from_the_cli(tmp_path, monkeypatch):
    import shlex

    import numpy as np

    module, command = _readme_example_module()
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "my-digits"
    folder.mkdir(parents=True)
    for name, n in (("train.npz", 96), ("test.npz", 32)):
        labels = rng.integers(0, 10, size=n)
        images = np.clip(labels[:, None, None, None] * 20 + rng.normal(0, 10, (n, 1, 16, 16)), 0, 255)
        np.savez(folder / name, images=images.astype(np.uint8), labels=labels.astype(np.int64))
    net = module.PixelMixNet(input_shape=(1, 16, 16), num_classes=10).double()
    rule = GAITProp(net, normalize=True, eta=1e-7)
    x = torch.rand(8, 256, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    corr = rule_alignment(rule, x, y)
    assert min(v for k, v in corr.items() if k.startswith("bp_corr/")) >= 0.9999
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:3] == ["python", "-m", "lightning_gait.fit"]
    monkeypatch.chdir(tmp_path)
    code = fit.main(argv[3:] + ["--data.download", "false", "--data.val_size", "16", "--trainer.logger", "false",
                                "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])
    assert code == 0


def _without_biases(net):
    """``net`` with every layer's bias removed (``bias = None``, as ``nn.Linear(bias=False)``)."""
    for layer in net.layers:
        del layer.bias
        layer.bias = None
    return net


def test_layers_without_bias_follow_the_contract():
    """A network whose layers have no bias: reset works, backprop equals autograd, GAIT-N
    matches backprop at initialisation, FA and TP give finite weight updates and no bias's."""
    from lightning_gait import InvertibleMLP

    torch.manual_seed(0)
    net = _without_biases(InvertibleMLP(in_features=20, num_classes=4, width=20, depth=3, square_output=True))
    net.reset_parameters()
    net = net.double()
    assert all(bias is None for _, bias in net.layer_parameters())
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(16, 20, generator=g, dtype=torch.float64), torch.randint(0, 4, (16,), generator=g)

    loss = torch.nn.functional.cross_entropy(net(x), y, reduction="sum")
    expected = torch.autograd.grad(loss, [w for w, _ in net.layer_parameters()])
    got = Backprop(net).double().local_gradients(x, y)
    for (gw, gb), reference in zip(got, expected):
        assert gb is None
        torch.testing.assert_close(gw, reference, rtol=1e-12, atol=1e-12)

    rule = GAITProp(net, normalize=True, eta=1e-7).double()
    metrics = rule_alignment(rule, x, y)
    assert min(metrics[f"bp_corr/layer_{k}"] for k in range(1, 4)) >= 0.9999, metrics

    for rule_cls in (FeedbackAlignment, TargetProp):
        grads = rule_cls(net).double().local_gradients(x, y)
        assert all(gb is None and torch.isfinite(gw).all() for gw, gb in grads)


def test_a_network_without_activations_is_told_what_to_set():
    from torch import nn

    from lightning_gait.networks import InvertibleNetwork

    class NoActivations(InvertibleNetwork):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.num_classes = 2

    net = NoActivations()
    with pytest.raises(NotImplementedError, match=r"NoActivations sets no `activation`.*override `activation_of"):
        net.trace(torch.zeros(1, 4))
    with pytest.raises(NotImplementedError, match="no `output_activation`"):
        net.activation_of(1)
