"""BPCorrelation, TargetNorms and Orthogonality in a plain Lightning Trainer (float64 unless stated)."""
from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_gait import Backprop, GAITProp, InvertibleMLP
from lightning_gait.callbacks import BPCorrelation, Orthogonality, TargetNorms
from lightning_gait.diagnostics import rule_alignment

IN, WIDTH, DEPTH, BATCH, BATCHES = 48, 32, 4, 32, 6
LAYERS = DEPTH + 1

ALIGNMENT = ("bp_corr", "bp_cos", "bp_angle", "bp_norm_ratio")
TARGETS = ("target_norm", "log10_multiplier", "log10_multiplier_min", "log10_multiplier_max")
GAMMAS = ("gamma", "gamma_min", "gamma_max")


def expected_keys(*, targets: bool = True):
    keys = {f"{f}/layer_{k}" for f in ALIGNMENT for k in range(1, LAYERS + 1)}
    keys |= {f"{f}/layer_{k}" for f in ("ortho", "cond") for k in range(2, LAYERS + 1)}
    if targets:
        keys |= {f"{f}/layer_{k}" for f in TARGETS for k in range(1, LAYERS + 1)}
        keys |= {f"{f}/layer_{k}" for f in GAMMAS for k in range(2, LAYERS + 1)}
    return keys


def loader(seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH * BATCHES, IN, generator=g)
    y = torch.randint(0, 10, (BATCH * BATCHES,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def make_rule(kind: str = "gait_norm", seed: int = 0):
    torch.manual_seed(seed)
    net = InvertibleMLP(IN, WIDTH, DEPTH, 10)
    if kind == "gait_norm":
        return GAITProp(net, normalize=True, lr=1e-3)
    if kind == "backprop":
        return Backprop(net, lr=1e-3)
    raise ValueError(kind)


def fit(rule, callbacks, tmp_path: Path, *, epochs: int = 2, logger=True):
    trainer = pl.Trainer(
        max_epochs=epochs,
        precision="64-true",
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(str(tmp_path)) if logger else False,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1000,  # the callbacks must not depend on it
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(rule, loader(), loader(1))
    return trainer


def read_csv(trainer) -> list:
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def logged(rows, key):
    """(step, value) of every row where ``key`` has a value; NaN kept as NaN."""
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def test_every_metric_at_every_layer_on_schedule(tmp_path):
    callbacks = [BPCorrelation(every_n_steps=4), TargetNorms(every_n_steps=4), Orthogonality(every_n_steps=5)]
    trainer = fit(make_rule("gait_norm"), callbacks, tmp_path)
    rows = read_csv(trainer)
    keys = set(rows[0])
    assert expected_keys() <= keys
    assert "gamma/layer_1" not in keys and "ortho/layer_1" not in keys and "cond/layer_1" not in keys
    # 12 batches (steps 0..11): measured at the first batch and every n batches after
    assert [s for s, _ in logged(rows, "bp_corr/layer_1")] == [0, 4, 8]
    assert [s for s, _ in logged(rows, "target_norm/layer_3")] == [0, 4, 8]
    assert [s for s, _ in logged(rows, "ortho/layer_2")] == [0, 5, 10]
    # GAIT-N, float64, orthogonal init: the first measurement equals backprop
    for k in range(1, LAYERS + 1):
        assert logged(rows, f"bp_corr/layer_{k}")[0][1] >= 0.9999
        assert logged(rows, f"bp_norm_ratio/layer_{k}")[0][1] == pytest.approx(1.0, abs=1e-3)
    # the history the callbacks keep is what the logger got
    bp = callbacks[0]
    assert [s for s, _ in bp.history] == [0, 4, 8]
    assert bp.latest["bp_corr/layer_2"] == logged(rows, "bp_corr/layer_2")[-1][1]


def test_backprop_sanity_and_no_targets(tmp_path):
    callbacks = [BPCorrelation(every_n_steps=3), TargetNorms(every_n_steps=3), Orthogonality(every_n_steps=6)]
    with pytest.warns(RuntimeWarning, match="TargetNorms: Backprop left no TargetTrace"):
        trainer = fit(make_rule("backprop"), callbacks, tmp_path)
    rows = read_csv(trainer)
    assert expected_keys(targets=False) <= set(rows[0])
    assert not any(k.startswith(("target_norm/", "gamma/")) for k in rows[0])
    for k in range(1, LAYERS + 1):
        values = [v for _, v in logged(rows, f"bp_corr/layer_{k}")]
        assert len(values) == 4 and min(values) >= 0.999999, (k, values)


def test_callbacks_do_not_change_training(tmp_path):
    """Same seed, same data: identical weights after training with and without the callbacks."""
    plain = make_rule("gait_norm")
    fit(plain, [], tmp_path / "off", logger=False, epochs=1)
    watched = make_rule("gait_norm")
    callbacks = [BPCorrelation(every_n_steps=2, at_init=True, init_networks=2), TargetNorms(every_n_steps=2),
                 Orthogonality(every_n_steps=2)]
    fit(watched, callbacks, tmp_path / "on", epochs=1)
    assert [len(cb.history) for cb in callbacks] == [3, 3, 3]
    for a, b in zip(plain.net.parameters(), watched.net.parameters()):
        assert torch.equal(a, b)


def test_at_init_logs_mean_and_spread_over_networks(tmp_path):
    bp = BPCorrelation(every_n_steps=0, at_init=True, init_networks=3, init_seed=7)
    trainer = fit(make_rule("gait_norm"), [bp], tmp_path, epochs=1)
    rows = read_csv(trainer)
    for k in range(1, LAYERS + 1):
        (step, corr), = logged(rows, f"bp_corr_init/layer_{k}")
        assert step == 0 and corr >= 0.9999
        assert len(logged(rows, f"bp_corr_init_std/layer_{k}")) == 1
        assert logged(rows, f"bp_angle_init/layer_{k}")
    assert "bp_corr/layer_1" not in rows[0]  # every_n_steps=0: no periodic measurement
    assert not bp.history


class ZeroFirstLayer(Backprop):
    """A rule whose update of layer 1 is zero: its direction is undefined."""

    def local_gradients(self, x, y):
        grads = super().local_gradients(x, y)
        grads[0] = (torch.zeros_like(grads[0][0]), grads[0][1])
        return grads


def test_nan_is_logged_as_nan_with_a_warning(tmp_path):
    torch.manual_seed(0)
    rule = ZeroFirstLayer(InvertibleMLP(IN, WIDTH, DEPTH, 10), lr=1e-3)
    bp = BPCorrelation(every_n_steps=6)
    with pytest.warns(RuntimeWarning, match=r"NaN at step 0 \(BPCorrelation\): .*bp_corr/layer_1"):
        trainer = fit(rule, [bp], tmp_path, epochs=1)
    rows = read_csv(trainer)
    assert all(math.isnan(v) for _, v in logged(rows, "bp_corr/layer_1"))
    assert all(math.isnan(v) for _, v in logged(rows, "bp_angle/layer_1"))
    assert logged(rows, "bp_norm_ratio/layer_1")[0][1] == 0.0
    assert logged(rows, "bp_corr/layer_2")[0][1] >= 0.999999


def test_bp_correlation_reads_the_steps_own_update_and_changes_nothing(tmp_path):
    """The step hands over its update: the metrics are those of ``local_gradients`` at the
    weights before the step (not called again), and training is bitwise unchanged."""
    rule = make_rule("gait_norm")
    twin = copy.deepcopy(rule)
    x, y = next(iter(loader()))
    expected = rule_alignment(copy.deepcopy(rule).double(), x.double(), y)
    calls = []
    original = rule.local_gradients
    rule.local_gradients = lambda *a, **k: calls.append(1) or original(*a, **k)
    bp = BPCorrelation(every_n_steps=1)
    assert bp.reuses_step(rule)
    trainer = fit(rule, [bp], tmp_path, epochs=1)
    assert calls == []
    rows = read_csv(trainer)
    assert [step for step, _ in logged(rows, "bp_corr/layer_1")] == list(range(BATCHES))
    for key, value in expected.items():
        assert logged(rows, key)[0][1] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert min(v for _, v in logged(rows, "bp_corr/layer_1")) > 0.99
    fit(twin, [], tmp_path / "plain", epochs=1, logger=False)
    for a, b in zip(rule.net.parameters(), twin.net.parameters()):
        assert torch.equal(a, b)
    assert rule.objective_hook is None


def test_bp_correlation_measures_a_rule_with_its_own_step_before_the_step(tmp_path):
    class OwnStep(GAITProp):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    rule = OwnStep(InvertibleMLP(IN, WIDTH, DEPTH, 10), normalize=True, lr=1e-3)
    x, y = next(iter(loader()))
    expected = rule_alignment(copy.deepcopy(rule).double(), x.double(), y)
    bp = BPCorrelation(every_n_steps=6)
    assert not bp.reuses_step(rule)
    rows = read_csv(fit(rule, [bp], tmp_path, epochs=1))
    for key, value in expected.items():
        assert logged(rows, key)[0][1] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_bp_correlation_logs_nan_for_a_skipped_step(tmp_path):
    torch.manual_seed(0)
    rule = GAITProp(InvertibleMLP(IN, WIDTH, DEPTH, 10), normalize=True, lr=1e-3, on_nonfinite="skip")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH * 2, IN, generator=g)
    x[BATCH:] = float("nan")  # the second batch's targets are not finite
    y = torch.randint(0, 10, (BATCH * 2,), generator=g)
    trainer = pl.Trainer(max_epochs=1, precision="64-true", accelerator="cpu", devices=1,
                         logger=CSVLogger(str(tmp_path)), callbacks=[BPCorrelation(every_n_steps=1)],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    with pytest.warns(RuntimeWarning, match="BPCorrelation: the step at 1 formed no finite update"):
        trainer.fit(rule, DataLoader(TensorDataset(x, y), batch_size=BATCH))
    rows = read_csv(trainer)
    values = logged(rows, "bp_corr/layer_2")
    assert [step for step, _ in values] == [0, 1]
    assert values[0][1] > 0.99 and math.isnan(values[1][1])
    assert rule.skipped_batches == 1


@pytest.mark.parametrize("bad", [-1, 2.5, True, "5"])
def test_every_n_steps_must_be_a_non_negative_integer(bad):
    for cls in (BPCorrelation, TargetNorms, Orthogonality):
        with pytest.raises(ValueError, match="every_n_steps"):
            cls(every_n_steps=bad)
    with pytest.raises(ValueError, match="init_networks"):
        BPCorrelation(init_networks=0)


def test_a_module_that_is_not_a_rule_is_refused(tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(IN, 10)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for cb, attr in ((BPCorrelation(), "net"), (TargetNorms(), "last_diagnostics"), (Orthogonality(), "net")):
        trainer = pl.Trainer(max_steps=1, logger=False, callbacks=[cb], enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        with pytest.raises(ValueError, match=f"{type(cb).__name__} needs a LocalLearningRule-like .* .{attr}; got Plain"):
            trainer.fit(Plain(), loader())


# Data-parallel runs (rank-0 measurement, no all-reduce outside the backward, one log per
# measurement) are tested in tests/test_ddp.py with these callbacks on.
