"""Every rule trains a small learnable problem through a Lightning Trainer; argument checks;
``training_step`` installs ``local_gradients`` (+ the orthogonality gradient); non-finite
targets raise a ``NonFiniteError`` naming layer and step, or are skipped when asked.

The problem is a synthetic 4-class classification in 20 dimensions (Gaussian clusters),
a unit test of each rule, not a stand-in for CIFAR-10. The learning rate is raised to
3e-3 (the rules' defaults are the paper's CIFAR-10 values), so that 10 epochs (80 steps)
take every rule's loss below 0.7 of its start (0.56 or lower; the smooth activation is
the slowest).
"""
from __future__ import annotations

import math
from typing import List

import pytest
import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_gait import Backprop, FeedbackAlignment, GAITProp, InvertibleMLP, NonFiniteError, TargetProp
from lightning_gait.networks import orthogonality_surrogate
from lightning_gait.targets import normalized_gamma
from _helpers import default_dtype

IN_FEATURES, WIDTH, DEPTH, NUM_CLASSES = 20, 32, 3, 4
NUM_SAMPLES, BATCH_SIZE, EPOCHS = 512, 64, 10  # 8 steps per epoch, 80 steps
LR = 3e-3


def make_net(*, activation: str = "leaky_relu", square_output: bool = True, dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    with default_dtype(dtype):
        return InvertibleMLP(IN_FEATURES, WIDTH, DEPTH, NUM_CLASSES, activation=activation, square_output=square_output)


def make_dataset(dtype=torch.float64, seed: int = 0) -> TensorDataset:
    """Four Gaussian clusters with unit-norm centres, noise 0.3 per coordinate."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(NUM_CLASSES, IN_FEATURES, generator=g, dtype=torch.float64)
    centres = 1.5 * centres / centres.norm(dim=1, keepdim=True)
    y = torch.randint(0, NUM_CLASSES, (NUM_SAMPLES,), generator=g)
    x = centres[y] + 0.3 * torch.randn(NUM_SAMPLES, IN_FEATURES, generator=g, dtype=torch.float64)
    return TensorDataset(x.to(dtype), y)


def mean_loss(net: InvertibleMLP, data: TensorDataset) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return F.cross_entropy(net(x), y).item()


def make_trainer(precision: str = "64-true", **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


# ---------------------------------------------------------------- every rule trains
RULES = {
    "backprop": (lambda net: Backprop(net, lr=LR), {}),
    "backprop_plain_output": (lambda net: Backprop(net, lr=LR), dict(square_output=False)),
    "gait": (lambda net: GAITProp(net, lr=LR), {}),
    "gait_n": (lambda net: GAITProp(net, normalize=True, lr=LR), {}),
    "gait_s": (lambda net: GAITProp(net, lr=LR), dict(activation="smooth_leaky_relu")),
    "gait_sn": (lambda net: GAITProp(net, normalize=True, lr=LR), dict(activation="smooth_leaky_relu")),
    "gait_n_difference": (lambda net: GAITProp(net, normalize=True, target_mode="difference", lr=LR), {}),
    "gait_difference": (lambda net: GAITProp(net, target_mode="difference", lr=LR), dict(activation="smooth_leaky_relu")),
    "target_prop": (lambda net: TargetProp(net, lr=LR), {}),
    "feedback_alignment": (lambda net: FeedbackAlignment(net, lr=LR), {}),
}


@pytest.mark.timeout(300)  # a hang guard, not a speed check
@pytest.mark.parametrize("name", list(RULES))
def test_rule_lowers_the_training_loss_float64(name):
    make_rule, net_options = RULES[name]
    net = make_net(**net_options)
    data = make_dataset()
    before = mean_loss(net, data)
    rule = make_rule(net)
    make_trainer().fit(rule, DataLoader(data, batch_size=BATCH_SIZE, shuffle=True))
    after = mean_loss(net, data)
    assert rule.net is net  # trained in place
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert math.isfinite(after)
    assert after < 0.7 * before, f"{name}: mean cross-entropy {before:.4f} -> {after:.4f} after {EPOCHS} epochs"


@pytest.mark.timeout(300)  # a hang guard, not a speed check
@pytest.mark.parametrize(
    "name, make_rule",
    [
        ("gait_n_difference", lambda net: GAITProp(net, normalize=True, target_mode="difference", lr=LR)),
        ("backprop", lambda net: Backprop(net, lr=LR)),
    ],
    ids=["gait_n_difference", "backprop"],
)
def test_rule_lowers_the_training_loss_float32(name, make_rule):
    net = make_net(dtype=torch.float32)
    data = make_dataset(torch.float32)
    before = mean_loss(net, data)
    rule = make_rule(net)
    make_trainer(precision="32-true").fit(rule, DataLoader(data, batch_size=BATCH_SIZE, shuffle=True))
    after = mean_loss(net, data)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert after < 0.7 * before, f"{name} float32: {before:.4f} -> {after:.4f}"


def test_training_logs_the_documented_metrics():
    net = make_net()
    data = make_dataset()
    rule = GAITProp(net, normalize=True, lr=LR)
    trainer = make_trainer(max_epochs=1, limit_val_batches=2)
    loader = DataLoader(data, batch_size=BATCH_SIZE)
    trainer.fit(rule, loader, loader)
    keys = set(trainer.callback_metrics)
    for key in ("train/loss", "train/acc", "train/ortho_penalty", "val/loss", "val/acc", "val/acc_best"):
        assert key in keys, f"{key} not logged; got {sorted(keys)}"
    trainer.test(rule, loader, verbose=False)
    assert {"test/loss", "test/acc"} <= set(trainer.callback_metrics)


# ---------------------------------------------------------------- training_step == local_gradients
class CapturesInstalledGradients:
    """Mix-in: records every parameter's ``.grad`` just before each optimizer step."""

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        self.installed: List[List[torch.Tensor]] = []

        def record(opt, args, kwargs):
            self.installed.append([p.grad.detach().clone() for p in self.net.parameters()])

        optimizer.register_step_pre_hook(record)
        return optimizer


def _capturing(cls):
    return type(f"Capturing{cls.__name__}", (CapturesInstalledGradients, cls), {})


@pytest.mark.parametrize("ortho_weight", [0.0, 100.0])
@pytest.mark.parametrize(
    "cls, options",
    [
        (Backprop, {}),
        (GAITProp, dict(normalize=True)),
        (GAITProp, dict(target_mode="difference")),
        (TargetProp, {}),
        (FeedbackAlignment, {}),
    ],
    ids=["backprop", "gait_n", "gait_difference", "target_prop", "feedback_alignment"],
)
def test_training_step_installs_local_gradients_plus_ortho_gradient(cls, options, ortho_weight):
    net = make_net(seed=5)
    # leave the orthogonal init so that the penalty's gradient is not zero
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(1.05)
            layer.bias.add_(0.01)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    data = make_dataset()
    x, y = data.tensors[0][:BATCH_SIZE], data.tensors[1][:BATCH_SIZE]
    rule = _capturing(cls)(net, lr=LR, ortho_weight=ortho_weight, **options)
    make_trainer(max_steps=1, max_epochs=None).fit(rule, DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE))
    assert len(rule.installed) == 1

    net.load_state_dict(initial)  # back to the weights the step saw
    expected = [g for pair in rule.local_gradients(x, y) for g in pair]
    if ortho_weight > 0:
        surrogate, _ = orthogonality_surrogate(net)
        ortho = torch.autograd.grad(surrogate, list(net.parameters()), allow_unused=True)
        expected = [e if o is None else e + ortho_weight * o for e, o in zip(expected, ortho)]
        assert any(o is not None and o.abs().max() > 0 for o in ortho)
    for i, (got, want) in enumerate(zip(rule.installed[0], expected)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"parameter {i} of {cls.__name__}")


# ---------------------------------------------------------------- arguments
def _net(**kwargs):
    return make_net(**kwargs)


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: GAITProp(_net(), gamma=-1e-3), "gamma"),
        (lambda: GAITProp(_net(), gamma=0.0), "gamma"),
        (lambda: GAITProp(_net(), normalize=True, eta=-1e-7), "eta"),
        (lambda: GAITProp(_net(), normalize=True, eta=0.0), "eta"),
        (lambda: GAITProp(_net(), target_mode="relative"), "target_mode"),
        (lambda: GAITProp(_net(square_output=False)), "square_output"),
        (lambda: TargetProp(_net(square_output=False)), "square_output"),
        (lambda: TargetProp(_net(), output_step=0.0), "output_step"),
        (lambda: Backprop(_net(), lr=-1.0), "lr"),
        (lambda: Backprop(_net(), loss_reduction="max"), "loss_reduction"),
        (lambda: Backprop(_net(), on_nonfinite="ignore"), "on_nonfinite"),
        (lambda: Backprop(_net(), ortho_weight=-1.0), "ortho_weight"),
        (lambda: Backprop(_net(), fused_adam="yes"), "fused_adam"),
        (lambda: FeedbackAlignment(_net(), adam_eps=0.0), "adam_eps"),
        (lambda: Backprop(torch.zeros(3)), "net"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_arguments_raise_value_error_naming_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_fused_adam_is_the_default_and_matches_the_plain_adam():
    """Fused Adam (the default on CPU) and PyTorch's default Adam, fed the same 20 GAIT-N
    gradients in float64, end at the same weights to round-off; ``fused_adam=True``
    refuses parameters it cannot fuse and names the argument."""
    x, y = make_dataset().tensors
    nets = {fused: make_net() for fused in (None, False)}
    rules = {fused: GAITProp(net, normalize=True, lr=LR, fused_adam=fused) for fused, net in nets.items()}
    optimizers = {fused: rule.configure_optimizers() for fused, rule in rules.items()}
    assert optimizers[None].defaults.get("fused") is True
    assert not optimizers[False].defaults.get("fused")
    start = torch.cat([p.detach().flatten() for p in nets[False].parameters()])
    for step in range(20):
        grads = rules[False].local_gradients(x[step * 16:(step + 1) * 16], y[step * 16:(step + 1) * 16])
        for fused, net in nets.items():
            for (gw, gb), layer in zip(grads, net.layers):
                layer.weight.grad, layer.bias.grad = gw.clone(), gb.clone()
            optimizers[fused].step()
    final = {fused: torch.cat([p.detach().flatten() for p in net.parameters()]) for fused, net in nets.items()}
    moved = (final[False] - start).norm()
    assert moved > 0
    assert (final[None] - final[False]).norm() <= 1e-13 * moved
    rule = Backprop(make_net(), fused_adam=True)
    rule.net.to("meta")  # no fused Adam kernel for the meta device
    with pytest.raises(ValueError, match="fused_adam"):
        rule.configure_optimizers()


@pytest.mark.parametrize("saved_with, resumed_with", [(False, None), (None, False)])
def test_resume_uses_the_adam_implementation_asked_for_now(tmp_path, saved_with, resumed_with):
    """``Optimizer.load_state_dict`` restores the checkpoint's ``fused`` flag; the rule puts
    back the implementation chosen by its own ``fused_adam`` when training starts."""
    loader = DataLoader(make_dataset(), batch_size=BATCH_SIZE, shuffle=False)
    first = make_trainer(max_epochs=1, limit_train_batches=2)
    first.fit(GAITProp(make_net(), normalize=True, lr=LR, fused_adam=saved_with), loader)
    ckpt = tmp_path / "first.ckpt"
    first.save_checkpoint(ckpt)
    saved_flag = torch.load(ckpt, weights_only=False)["optimizer_states"][0]["param_groups"][0]["fused"]
    assert bool(saved_flag) == (saved_with is None)
    second = make_trainer(max_epochs=2, limit_train_batches=2)
    second.fit(GAITProp(make_net(), normalize=True, lr=LR, fused_adam=resumed_with), loader, ckpt_path=ckpt)
    assert second.global_step == 4
    group = second.optimizers[0].param_groups[0]
    assert bool(group["fused"]) == (resumed_with is None)
    if resumed_with is None:
        steps = [second.optimizers[0].state[p]["step"] for p in group["params"]]
        assert all(t.dtype == torch.float32 and float(t) == 4 for t in steps)


def test_backprop_and_feedback_alignment_accept_a_plain_output():
    for cls in (Backprop, FeedbackAlignment):
        rule = cls(_net(square_output=False))
        grads = rule.local_gradients(*make_dataset().tensors)
        assert grads[-1][0].shape == (NUM_CLASSES, WIDTH)


# ---------------------------------------------------------------- non-finite targets and updates
def nan_batch_loader(nan_batch: int, num_batches: int = 4) -> DataLoader:
    data = make_dataset()
    x = data.tensors[0][: num_batches * BATCH_SIZE].clone()
    y = data.tensors[1][: num_batches * BATCH_SIZE]
    x[nan_batch * BATCH_SIZE + 3, 5] = float("nan")
    return DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=False)


NONFINITE_RULES = {
    "gait": lambda net, **kw: GAITProp(net, normalize=True, lr=LR, **kw),
    "gait_difference": lambda net, **kw: GAITProp(net, target_mode="difference", lr=LR, **kw),
    "target_prop": lambda net, **kw: TargetProp(net, lr=LR, **kw),
    "feedback_alignment": lambda net, **kw: FeedbackAlignment(net, lr=LR, **kw),
    "backprop": lambda net, **kw: Backprop(net, lr=LR, **kw),
}


@pytest.mark.parametrize("name", list(NONFINITE_RULES))
def test_nan_target_raises_naming_layer_and_step(name):
    net = make_net()
    rule = NONFINITE_RULES[name](net)
    with pytest.raises(NonFiniteError) as info:
        make_trainer(max_epochs=1).fit(rule, nan_batch_loader(nan_batch=2))
    message = str(info.value)
    assert "layer 4" in message, message  # the output layer (1-based) of depth 3, first in backward order
    assert "step 2" in message, message


def test_nan_target_message_names_the_first_bad_layer_from_the_output():
    net = make_net()
    x, y = make_dataset().tensors
    rule = GAITProp(net, normalize=True)
    with pytest.raises(NonFiniteError, match=r"target difference t - a at layer 4 .*global step 0"):
        rule.local_gradients(torch.full_like(x[:8], float("nan")), y[:8])


@pytest.mark.parametrize("name", ["gait", "backprop"])
def test_nan_batch_is_skipped_and_warned_when_asked(name):
    net = make_net()
    rule = NONFINITE_RULES[name](net, on_nonfinite="skip")
    snapshots = []

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots.append([p.detach().clone() for p in module.net.parameters()])

    with pytest.warns(UserWarning, match="skipped"):
        make_trainer(max_epochs=1, callbacks=[Snapshot()]).fit(rule, nan_batch_loader(nan_batch=2))
    assert len(snapshots) == 4
    assert rule.skipped_batches == 1
    # batch 2 changed nothing; batches 1 and 3 did train
    assert all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())


def test_zero_target_difference_is_guarded():
    """Normalized gamma of a zero difference is finite, and so is the whole update."""
    assert normalized_gamma(torch.zeros(3, 7, dtype=torch.float64), 1e-7).tolist() == [1.0, 1.0, 1.0]
    net = make_net()
    with torch.no_grad():
        net.layers[-1].weight.mul_(1e8)  # saturated softmax: softmax - onehot is exactly 0
    x, _ = make_dataset().tensors
    y = net(x[:16]).argmax(dim=1)
    for mode in ("absolute", "difference"):
        rule = GAITProp(net, normalize=True, target_mode=mode)
        grads = rule.local_gradients(x[:16], y)
        assert all(bool(torch.isfinite(g).all()) for pair in grads for g in pair)
        diagnostics = rule.last_diagnostics
        assert diagnostics.differences[-1].abs().max().item() == 0.0
        if mode == "difference":  # every difference is exactly zero, and every gamma the guard's 1
            assert all(g.eq(1.0).all() for g in diagnostics.gammas[1:])
