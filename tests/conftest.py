"""Shared fixtures: a tiny CIFAR-10 written in the real on-disk format."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def write_tiny_cifar(root: Path, *, per_batch: int = 64, test_size: int = 64, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` in CIFAR-10's python format, with random images.

    Labels are learnable: each class has its own mean colour, plus noise. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    centres = rng.integers(30, 225, size=(10, 3))

    def make(n: int):
        labels = rng.integers(0, 10, size=n)
        base = np.repeat(centres[labels], 32 * 32, axis=1)  # (n, 3072) in (C, H, W) order
        noise = rng.normal(0, 25, size=(n, 3072))
        data = np.clip(base + noise, 0, 255).astype(np.uint8)
        return data, [int(v) for v in labels]

    for i in range(1, 6):
        data, labels = make(per_batch)
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {i} of 5", "labels": labels, "data": data,
                         "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)]}, f)
    data, labels = make(test_size)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
                     "filenames": [f"test_{j}.png" for j in range(test_size)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per_batch, "num_vis": 3072,
                     "label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                     "dog", "frog", "horse", "ship", "truck"]}, f)
    return root


@pytest.fixture(scope="session")
def tiny_cifar_root(tmp_path_factory) -> Path:
    """A generated CIFAR-10 (320 train, 64 test images) in the real format."""
    return write_tiny_cifar(tmp_path_factory.mktemp("tiny_cifar"))


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """The real CIFAR-10 beside the checkout; tests that need it skip when it is absent."""
    if not (SHARED_DATA / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip(f"real CIFAR-10 not found under {SHARED_DATA}")
    return SHARED_DATA
