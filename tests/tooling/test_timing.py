"""EpochTimer: the training epoch's wall time, without the validation Lightning runs inside it."""
import time

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gait.timing import EpochTimer

VALIDATION_SLEEP_S = 0.5


class _SlowValidation(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        time.sleep(VALIDATION_SLEEP_S)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_time_leaves_out_validation():
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8)), batch_size=4)
    timer = EpochTimer(log_lr=False)
    trainer = pl.Trainer(max_epochs=2, callbacks=[timer], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1)
    start = time.perf_counter()
    trainer.fit(_SlowValidation(), train_dataloaders=loader, val_dataloaders=loader)
    total = time.perf_counter() - start
    # each epoch validates 2 batches (1 s of sleep), and the sanity check 1 more: 2.5 s in all
    assert total > 5 * VALIDATION_SLEEP_S
    assert 0 < timer.last_epoch_s < VALIDATION_SLEEP_S, timer.last_epoch_s
    assert float(trainer.callback_metrics["time/epoch_s"]) == pytest.approx(timer.last_epoch_s, rel=1e-6)
