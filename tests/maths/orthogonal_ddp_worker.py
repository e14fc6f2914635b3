"""Worker of ``tests/maths/test_orthogonal_layers.py``: GAIT-N on orthogonal-by-construction layers under DDP.

``python tests/maths/orthogonal_ddp_worker.py OUT_DIR KIND --devices N``: trains a small
network of kind ``mlp`` or ``cnn`` (every square layer orthogonal by construction, Cayley
map; ``cnn_scaled``: scaled orthogonal) with GAIT-N in the difference form, float64, for
``STEPS`` global batches of ``GLOBAL_BATCH`` samples, and writes ``OUT_DIR/rank{r}.pt``
with the state dict after training. With ``--devices 2`` Lightning's ``ddp`` launcher
re-runs this command line for rank 1; each rank draws its network from a different seed,
so that only DDP's broadcast makes them agree. Rank ``r`` reads every ``N``-th sample from
``r`` on, in order, so the ranks' ``k``-th batches together are the ``k``-th batch of a
one-process run.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
import pytorch_lightning as pl
from torch.utils.data import DataLoader, TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lightning_gait import GAITProp, InvertibleCNN, InvertibleMLP  # noqa: E402

STEPS, GLOBAL_BATCH, NUM_CLASSES = 4, 16, 4


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(STEPS * GLOBAL_BATCH, 20, generator=g, dtype=torch.float64)
    return x, torch.randint(0, NUM_CLASSES, (len(x),), generator=g)


def make_rule(kind: str, seed: int) -> GAITProp:
    torch.manual_seed(seed)
    scaled = kind.endswith("_scaled")
    if kind.startswith("cnn"):
        net = InvertibleCNN((5, 2, 2), NUM_CLASSES, channels=2, stages=1, patch=2, mixers=1, keep=6,
                            orthogonal="cayley", orthogonal_scale=scaled)
    else:
        net = InvertibleMLP(20, 16, 3, NUM_CLASSES, orthogonal="cayley", orthogonal_scale=scaled)
    return GAITProp(net, normalize=True, target_mode="difference", ortho_weight=0.0, lr=1e-2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("kind")
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    rank = int(os.environ.get("LOCAL_RANK", 0))
    rule = make_rule(args.kind, seed=rank)  # rank 1's weights differ until DDP broadcasts rank 0's
    x, y = make_data()
    # rank r reads samples r, r + N, r + 2N, ... in order: the ranks' k-th batches together
    # are samples 16k .. 16k + 15, the k-th batch of one process
    loader = DataLoader(TensorDataset(x[rank::args.devices], y[rank::args.devices]),
                        batch_size=GLOBAL_BATCH // args.devices, shuffle=False)
    trainer = pl.Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                         precision="64-true", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, use_distributed_sampler=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(rule, train_dataloaders=loader)
    state = {k: v.detach().clone() for k, v in rule.net.state_dict().items()}
    torch.save({"state": state, "global_step": trainer.global_step}, Path(args.out) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
