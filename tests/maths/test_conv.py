"""The invertible CNN: exact layer inverses, matrix views, every rule against backprop, the CLI.

Small networks in float64 unless a test says otherwise. ``SMALL`` has every kind of
layer and factors out channels at each stage and at the output layer::

    3x16x16 -conv3x3-> 6x16x16 -patch-> 24x8x8 -1x1-> 24x8x8 -(first 4)-patch-> 16x4x4
            -1x1-> 16x4x4 -(first 4, flattened: 64)-dense-> 64 (first 10: logits)
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from lightning_gait import Backprop, FeedbackAlignment, GAITProp, InvertibleCNN, TargetProp, fit
from lightning_gait.diagnostics import rule_alignment
from lightning_gait.networks import Conv1x1, FlatLinear, PatchConv, matrix_view, orthogonality_penalty
from lightning_gait.networks import orthogonality_surrogate

SHAPE = (3, 16, 16)
SMALL = dict(channels=6, stages=2, patch=2, mixers=1, keep=4)
from conftest import REPO_ROOT


def make_net(seed: int = 0, dtype=torch.float64, **kwargs) -> InvertibleCNN:
    torch.manual_seed(seed)
    return InvertibleCNN(SHAPE, 10, **{**SMALL, **kwargs}).to(dtype)


def batch(n: int = 16, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3 * 16 * 16, generator=g, dtype=torch.float64).to(dtype)
    return x, torch.randint(0, 10, (n,), generator=g)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def bp_corr(rule, x, y):
    metrics = rule_alignment(rule, x, y)
    return [metrics[f"bp_corr/layer_{k}"] for k in range(1, rule.net.num_layers + 1)]


# ---------------------------------------------------------------------- layers and layout
@pytest.mark.parametrize("make_layer, shape", [
    (lambda: Conv1x1(5), (3, 5, 4, 6)),
    (lambda: PatchConv(3, 2), (2, 3, 4, 6)),
    (lambda: PatchConv(2, 4), (2, 2, 8, 4)),
    (lambda: FlatLinear((2, 3, 3), 18), (4, 2, 3, 3)),
])
def test_matrix_view_reproduces_the_forward(make_layer, shape):
    torch.manual_seed(0)
    layer = make_layer().double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(shape, dtype=torch.float64)
    z = layer(x)
    view = matrix_view(layer)
    assert view.matrix is layer.weight and view.is_square
    rows = view.input_rows(x)
    torch.testing.assert_close(view.rows_to_output(rows @ view.matrix.T + view.bias, z), z, rtol=0, atol=1e-13)
    # the reshapes are exact inverses of each other
    assert torch.equal(view.rows_to_input(rows, z), x)
    assert torch.equal(view.rows_to_output(view.output_rows(z), z), z)


def test_patch_rows_are_the_convolution_patches():
    """Row order (sample, patch row, patch column), entries (channel, row, column): F.unfold's."""
    torch.manual_seed(0)
    layer = PatchConv(3, 2).double()
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    unfolded = F.unfold(x, kernel_size=2, stride=2)  # (N, C k^2, patches)
    assert torch.equal(matrix_view(layer).input_rows(x), unfolded.transpose(1, 2).reshape(-1, 12))


def test_cifar_layout():
    net = InvertibleCNN((3, 32, 32), 10)
    layout = net.layout()
    assert [row["type"] for row in layout] == ["Conv2d"] + ["PatchConv", "Conv1x1"] * 3 + ["FlatLinear"]
    assert [row["output"] for row in layout] == [
        (32, 32, 32), (128, 16, 16), (128, 16, 16), (128, 8, 8), (128, 8, 8), (128, 4, 4), (128, 4, 4), (512,)]
    assert [row["reads"] for row in layout][3::2] == [(32, 16, 16), (32, 8, 8), (32, 4, 4)]
    assert [row["matrix"] for row in layout] == [(32, 27)] + [(128, 128)] * 6 + [(512, 512)]
    assert sum(row["params"] for row in layout) == sum(p.numel() for p in net.parameters()) == 362_624
    assert net.invertible and net.inverted_layer_indices == list(range(1, 8))
    x = torch.rand(4, 3072)
    assert net(x).shape == (4, 10)
    torch.testing.assert_close(net(x.view(4, 3, 32, 32)), net(x))
    for matrix in (m for _, m in net.orthogonality_terms()):
        torch.testing.assert_close(matrix @ matrix.T, torch.eye(matrix.shape[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs, named", [
    (dict(input_shape=None, num_classes=10), "input_shape"),
    (dict(input_shape=(3, 32, 32), num_classes=None), "num_classes"),
    (dict(input_shape=(3, 20, 20), num_classes=10), "multiples"),
    (dict(input_shape=(3, 32, 32), num_classes=10, keep=200), "keep"),
    (dict(input_shape=(3, 32, 32), num_classes=10, channels=1, keep=1, stages=5), "num_classes"),
    (dict(input_shape=(3, 32, 32), num_classes=10, activation="relu7"), "relu7"),
])
def test_bad_arguments_are_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        InvertibleCNN(**kwargs)


def test_input_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="input_shape"):
        make_net()(torch.rand(2, 3 * 8 * 8, dtype=torch.float64))


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("activation", ["leaky_relu", "smooth_leaky_relu"])
@pytest.mark.parametrize("layout", [{}, dict(channels=3, stages=1, patch=4, mixers=2, keep=None)])
def test_every_inverted_layer_inverts_exactly(activation, layout):
    net = make_net(activation=activation, **layout)
    with torch.no_grad():  # off the orthogonal init, with biases
        for layer in net.layers:
            layer.weight.add_(0.1 * torch.randn_like(layer.weight))
            layer.bias.normal_()
    x, _ = batch()
    trace = net.trace(x)
    assert net.inverted_layer_indices == list(range(1, net.num_layers))
    for i in net.inverted_layer_indices:
        recovered = net.invert_layer(i, trace.post[i])
        assert recovered.shape == trace.inputs[i].shape
        torch.testing.assert_close(recovered, trace.inputs[i], rtol=0, atol=1e-10, msg=f"layer {i + 1}")


def test_backprop_updates_equal_autograd():
    net = make_net()
    x, y = batch()
    loss = F.cross_entropy(net(x), y, reduction="sum")
    params = [p for pair in net.layer_parameters() for p in pair]
    expected = torch.autograd.grad(loss, params)
    got = [g for pair in Backprop(net).local_gradients(x, y) for g in pair]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["leaky_relu", "smooth_leaky_relu"])
@pytest.mark.parametrize("target_mode", ["absolute", "difference"])
def test_gait_n_matches_backprop_at_initialisation(activation, target_mode):
    """Orthogonal init, float64, eta 1e-7: correlation with backprop >= 0.9999 at every layer."""
    for seed in range(3):
        rule = GAITProp(make_net(seed, activation=activation), normalize=True, eta=1e-7, target_mode=target_mode)
        x, y = batch(seed=seed + 10)
        corr = bp_corr(rule, x, y)
        assert min(corr) >= 0.9999, (seed, corr)


@pytest.mark.parametrize("activation", ["leaky_relu", "smooth_leaky_relu"])
def test_gait_n_difference_form_in_float32(activation):
    for seed in range(2):
        rule = GAITProp(make_net(seed, torch.float32, activation=activation), normalize=True, eta=1e-7,
                        target_mode="difference")
        x, y = batch(seed=seed + 10, dtype=torch.float32)
        corr = bp_corr(rule, x, y)
        assert min(corr) >= 0.999, (seed, corr)


def test_auxiliary_channels_get_zero_target_difference():
    x, y = batch()
    keep = SMALL["keep"]
    for rule in (GAITProp(make_net(), normalize=True, target_mode="absolute"),
                 GAITProp(make_net(), normalize=True, target_mode="difference"), TargetProp(make_net())):
        rule.local_gradients(x, y)
        differences = rule.last_diagnostics.differences
        # layers 3 and 5 (mixers) are read by a factoring layer: channels from `keep` on are auxiliary
        for i in (2, 4):
            assert differences[i].dim() == 4
            assert torch.count_nonzero(differences[i][:, keep:]) == 0, (type(rule).__name__, i)
            assert torch.count_nonzero(differences[i][:, :keep]) > 0
        # the output's auxiliary units (beyond the 10 logits) have zero difference only at the top
        assert torch.count_nonzero(differences[-1][:, 10:]) == 0


def test_cached_inverse_gives_the_exact_updates():
    """Along a few Adam steps of the cached rule, its updates are the exact-inverse ones to 1e-6."""
    net = make_net()
    rule = GAITProp(net, normalize=True, target_mode="difference", inverse="cached", ortho_weight=0.0, lr=1e-3)
    exact_rule = GAITProp(net, normalize=True, target_mode="difference", ortho_weight=0.0)
    optimizer = rule.configure_optimizers()
    worst = 0.0
    for step in range(6):
        x, y = batch(seed=100 + step)
        grads = rule.local_gradients(x, y)
        exact = exact_rule.local_gradients(x, y)
        worst = max(worst, max(relative(a[0], b[0]) for a, b in zip(grads, exact)))
        optimizer.zero_grad(set_to_none=True)
        for (gw, gb), (w, b) in zip(grads, net.layer_parameters()):
            w.grad, b.grad = gw, gb
        optimizer.step()
    assert rule.inverse_strategy.exact_refreshes == net.num_layers - 1  # only the first step
    assert worst <= 1e-6


@pytest.mark.parametrize("rule_cls", [TargetProp, FeedbackAlignment])
def test_tp_and_fa_give_finite_nonzero_updates(rule_cls):
    rule = rule_cls(make_net())
    x, y = batch()
    updates = rule.local_gradients(x, y)
    assert len(updates) == rule.net.num_layers
    for k, (w, b) in enumerate(updates, start=1):
        assert torch.isfinite(w).all() and torch.isfinite(b).all() and w.abs().sum() > 0, f"layer {k}"
    if rule_cls is FeedbackAlignment:
        assert [tuple(rule.feedback(i).shape) for i in range(1, 6)] == \
            [(24, 24), (24, 24), (16, 16), (16, 16), (64, 64)]


def test_orthogonality_penalty_reaches_the_shared_matrices():
    net = make_net()
    terms = net.orthogonality_terms()
    assert [i for i, _ in terms] == [1, 2, 3, 4, 5]
    assert all(w is net.layers[i].weight for i, w in terms)
    assert float(orthogonality_penalty(net).detach()) < 1e-9  # orthogonal to float32 round-off (init in float32)
    with torch.no_grad():
        for _, w in terms:
            w.add_(0.05 * torch.randn_like(w))
    params = [w for _, w in terms]
    grads = torch.autograd.grad(orthogonality_penalty(net), params)
    surrogate_grads = torch.autograd.grad(orthogonality_surrogate(net)[0], params)
    for w, g, s in zip(params, grads, surrogate_grads):
        expected = 4 * (w @ w.T - torch.eye(w.shape[0], dtype=w.dtype)) @ w
        torch.testing.assert_close(g, expected.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(s, g, rtol=1e-10, atol=1e-12)
        assert g.abs().sum() > 0


# ---------------------------------------------------------------------- the CLI
def tiny_data_args(root: Path) -> list:
    return ["--data.data_dir", str(root), "--data.verify_checksums", "false", "--data.val_size", "64"]


TINY_NET = ["--model.init_args.net.init_args.channels", "4"]
CLI_CASES = {
    "bp": ["--config", "conv/bp"],
    "gait_norm": ["--config", "conv/gait_norm"],
    "gait_norm_paper_form": ["--config", "conv/gait_norm", "--model.init_args.target_mode", "absolute",
                             "--trainer.precision", "64-true"],
    "gait_smooth_norm": ["--config", "conv/gait_smooth_norm"],
    "tp": ["--config", "conv/tp"],
    "fa": ["--config", "conv/fa"],
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_every_conv_config_runs_fast_dev_run(case, tiny_cifar_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = fit.main([*CLI_CASES[case], *tiny_data_args(tiny_cifar_root), *TINY_NET, "--trainer.logger", "false",
                     "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])
    assert code == 0


def test_conv_configs_compose_from_the_base(tmp_path, monkeypatch):
    from lightning_gait.configs import regime_groups

    monkeypatch.chdir(tmp_path)
    assert regime_groups()["conv"] == ["conv/bp", "conv/fa", "conv/gait_norm", "conv/gait_smooth_norm", "conv/tp"]
    for name in regime_groups()["conv"]:
        config = fit._build_cli(["--config", name]).config.as_dict()  # what fit resolves
        net = config["model"]["init_args"]["net"]
        assert net["class_path"] == "lightning_gait.InvertibleCNN"
        assert net["init_args"]["input_shape"] == [3, 32, 32] and net["init_args"]["num_classes"] == 10
        # the CNN's settings (those of its reported curves): float32, lr 1e-3, inputs standardized per channel
        assert config["trainer"]["precision"] == "32-true" and config["model"]["init_args"]["lr"] == 1e-3
        assert config["data"]["init_args"]["normalize_channels"] and config["data"]["init_args"]["val_size"] == 5000
        if config["model"]["class_path"] == "lightning_gait.GAITProp":
            assert config["model"]["init_args"]["target_mode"] == "difference"
        assert config["trainer"]["logger"]["init_args"]["name"] == name.replace("/", "_")


def _final_checkpoint(root: Path) -> dict:
    ckpts = sorted(root.rglob("last.ckpt"))
    assert ckpts, f"no last.ckpt under {root}"
    return torch.load(ckpts[0], map_location="cpu", weights_only=False)


def test_resume_continues_exactly(tiny_cifar_root, tmp_path, monkeypatch):
    """conv/gait_norm: two epochs in one go == one epoch, stop, resume for the second (float64, 1e-12)."""
    monkeypatch.chdir(tmp_path)
    common = ["--config", "conv/gait_norm", *tiny_data_args(tiny_cifar_root), *TINY_NET,
              "--data.batch_size", "64", "--trainer.logger", "false", "--test_after_fit", "false",
              "--model.init_args.lr", "1e-3", "--trainer.precision", "64-true"]
    straight, first = tmp_path / "straight", tmp_path / "first"
    assert fit.main([*common, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(straight)]) == 0
    assert fit.main([*common, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(first)]) == 0
    halfway = _final_checkpoint(first)
    assert halfway["global_step"] == 4  # (320 - 64 validation images) / batch 64
    resumed_root = tmp_path / "resumed"
    assert fit.main([*common, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(resumed_root),
                     "--ckpt_path", str(sorted(first.rglob("last.ckpt"))[0])]) == 0
    a, b = _final_checkpoint(straight), _final_checkpoint(resumed_root)
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        if value.is_floating_point():
            assert value.dtype == torch.float64, key
            torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-12, msg=key)
    for key in ("net.layers.1.weight", "net.layers.2.weight", "net.layers.7.weight"):
        assert not torch.equal(halfway["state_dict"][key], a["state_dict"][key]), key
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for k in sa:
        torch.testing.assert_close(sb[k]["exp_avg_sq"], sa[k]["exp_avg_sq"], rtol=0, atol=1e-12)


def test_conv_correlation_variants_are_the_stacks_settings():
    """The CNN Fig. 2B's variants come from config stacks; they are the rule settings the study
    was run with (results/cnn_fig2b): activation, dtype, form, gamma mode, eta."""
    from experiments import conv_correlation as module

    variants = module.load_variants()
    got = [(v.name, v.activation, v.dtype, v.form, v.normalize, v.eta) for v in variants]
    assert got == [("GAIT-N", "leaky_relu", "float64", "absolute", True, 1e-7),
                   ("GAIT-SN", "smooth_leaky_relu", "float64", "absolute", True, 1e-7),
                   ("GAIT-N float32 difference", "leaky_relu", "float32", "difference", True, 1e-7),
                   ("GAIT", "leaky_relu", "float64", "absolute", False, 1e-7)]
    assert variants[3].gamma == 1e-3
    with pytest.raises(ValueError, match="not a GAIT-prop rule"):
        module.variant_from_stack("BP", ["conv/bp"])


@pytest.mark.e2e  # a whole experiment, or every regime
def test_conv_correlation_experiment_runs(tiny_cifar_root, tmp_path, monkeypatch):
    """experiments/conv_correlation.py on the generated CIFAR-10: CSVs, PNG, GAIT-N aligned with BP."""
    import csv

    from experiments import conv_correlation as module

    out = tmp_path / "out"
    assert module.main(["--data-dir", str(tiny_cifar_root), "--out", str(out), "--nets", "2", "--batch-size", "8",
                        "--channels", "4", "--no-verify-checksums"]) == 0
    rows = list(csv.DictReader(open(out / "fig2b_correlation.csv")))
    variants = module.load_variants()
    assert len(rows) == 2 * len(variants) * 8
    assert {r["variant"] for r in rows} == {v.name for v in variants}
    assert all(float(r["corr"]) >= 0.9999 for r in rows if r["variant"] == "GAIT-N")
    summary = list(csv.DictReader(open(out / "fig2b_summary.csv")))
    assert len(summary) == len(variants) * 8 and all(r["n_nets"] == "2" for r in summary)
    assert (out / "fig2b_correlation.png").stat().st_size > 0
