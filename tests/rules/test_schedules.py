"""The cosine schedule: its factor, the rates a Trainer's optimizer steps with, and a
resumed run that continues on the rates of an uninterrupted one (it has no state)."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gait import Backprop, InvertibleMLP
from lightning_gait.schedules import CosineLR, cosine_factor
from _helpers import default_dtype


def test_cosine_factor():
    assert cosine_factor(0, 100) == 1.0
    assert cosine_factor(50, 100) == pytest.approx(0.5)
    assert cosine_factor(100, 100) == pytest.approx(0.0, abs=1e-15)
    assert cosine_factor(200, 100, final=0.1) == pytest.approx(0.1)  # past the end: held at the final rate
    assert [cosine_factor(s, 100, warmup=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine_factor(4, 100, warmup=4) == 1.0
    with pytest.raises(ValueError, match="final_fraction"):
        CosineLR(final_fraction=2.0)


class _RecordRates(pl.Callback):
    def __init__(self):
        self.rates = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(tmp_path, max_epochs, ckpt_path=None):
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        net = InvertibleMLP(6, 8, 2, 3)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g))
    rule = Backprop(net, lr=1e-2)
    record = _RecordRates()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, precision="64-true", default_root_dir=tmp_path,
                         callbacks=[CosineLR(warmup_steps=2, total_steps=16), record])
    trainer.fit(rule, DataLoader(data, batch_size=16), ckpt_path=ckpt_path)
    return trainer, rule, record.rates


def test_the_optimizer_steps_with_the_schedules_rates_and_a_resume_continues_them(tmp_path):
    trainer, rule, rates = _fit(tmp_path / "full", 4)  # 4 steps an epoch, 16 steps
    assert rates == pytest.approx([1e-2 * cosine_factor(s, 16, warmup=2) for s in range(16)])
    first, _, _ = _fit(tmp_path / "part", 2)
    ckpt = first.checkpoint_callback.best_model_path
    _, resumed, later = _fit(tmp_path / "part", 4, ckpt_path=ckpt)
    assert later == pytest.approx(rates[8:])
    for a, b in zip(rule.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
