"""How long the CIFAR-10 DataModule takes to deliver one epoch of training batches.

Times ``setup("fit")`` (read the pickled batches, check them, split off validation) and
then, per dtype, full passes over ``train_dataloader()`` including the conversion that
``on_after_batch_transfer`` applies in training (uint8 -> float, ``/255``). Compare with the
epoch time a training run logs (``time/epoch_s``).

    python -m benchmarks.data_loading --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from lightning_gait.data import CIFAR10DataModule, DataNotFoundError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=3, help="passes per dtype")
    args = p.parse_args(argv)
    start = time.perf_counter()
    dm = CIFAR10DataModule(data_dir=args.data_dir, download=False, batch_size=args.batch_size,
                           val_size=args.val_size)
    try:
        dm.prepare_data()
        dm.setup("fit")
    except DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"setup('fit'): {time.perf_counter() - start:.2f} s")
    for dtype in (torch.float64, torch.float32):
        times = []
        for _ in range(args.epochs):
            start, images = time.perf_counter(), 0
            for x, _ in dm.train_dataloader():
                images += dm.preprocess(x, dtype).shape[0]
            times.append(time.perf_counter() - start)
        print(f"{str(dtype).replace('torch.', '')}: one epoch of batches ({images} images) in "
              + ", ".join(f"{t:.3f}" for t in times) + " s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
