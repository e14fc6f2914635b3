"""Shared fixtures: a tiny CIFAR-10, MNIST and Fashion-MNIST written in the real on-disk formats."""
from __future__ import annotations

import gzip
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
FIXTURES = TESTS_DIR / "fixtures"

#: the environment variable naming the folder of real data sets (CIFAR-10's ``cifar-10-batches-py``)
DATA_ENV = "LIGHTNING_GAIT_DATA"


def _data_dir(value: str | None) -> Path:
    """The real-data folder: ``value`` (relative to the working directory) or ``../shared/data``
    beside the repository root."""
    return Path(value).expanduser().resolve() if value else REPO_ROOT.parent / "shared" / "data"


#: the real-data folder, given once: ``--data-dir`` or ``$LIGHTNING_GAIT_DATA``, else ``../shared/data``
SHARED_DATA = _data_dir(os.environ.get(DATA_ENV))

# the research tooling (benchmarks/, experiments/) sits beside the package, at the repository root;
# the shared helpers (_helpers.py, contract_net.py, ddp_worker.py, this file) in tests/, above the
# folders that group the tests
for _path in (REPO_ROOT, TESTS_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def pytest_addoption(parser) -> None:
    parser.addoption("--data-dir", default=None,
                     help=f"folder holding the real data sets (default: ${DATA_ENV}, else ../shared/data)")


def pytest_configure(config) -> None:
    global SHARED_DATA
    option = config.getoption("--data-dir")
    if option:
        SHARED_DATA = _data_dir(option)


def real_cifar_batch(name: str = "data_batch_1") -> Path:
    """One file of the real CIFAR-10 in the configured data folder (it may not exist)."""
    return SHARED_DATA / "cifar-10-batches-py" / name

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # under ``pytest -n N`` the workers share the cores: one thread each, in the processes they start too
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


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


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    """Write a uint8 array as an idx file: big-endian magic ``0x08 * 256 + ndim``, sizes, bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = np.array([0x0800 + array.ndim, *array.shape], dtype=">u4").tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
    return path


def write_tiny_mnist(root: Path, folder: str = "MNIST", *, train_size: int = 96, test_size: int = 32,
                     seed: int = 0, compress: bool = False) -> Path:
    """Write ``root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` in the idx format.

    ``folder`` is ``"MNIST"`` or ``"FashionMNIST"`` (torchvision's layout); ``compress``
    writes the ``.gz`` files instead. Labels are learnable and balanced: each class has its
    own random 28 x 28 pattern, plus noise. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    patterns = np.where(rng.random((10, 28, 28)) < 0.3, 200.0, 20.0)
    suffix = ".gz" if compress else ""
    for split, n in (("train", train_size), ("t10k", test_size)):
        labels = rng.permutation(np.arange(n) % 10)
        images = np.clip(patterns[labels] + rng.normal(0, 30, size=(n, 28, 28)), 0, 255).astype(np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(raw / f"{split}-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return root


@pytest.fixture(scope="session")
def tiny_mnist_root(tmp_path_factory) -> Path:
    """Generated MNIST and Fashion-MNIST (96 train, 32 test images each) in torchvision's layout."""
    root = tmp_path_factory.mktemp("tiny_mnist")
    write_tiny_mnist(root, "MNIST", seed=0)
    return write_tiny_mnist(root, "FashionMNIST", seed=1)


@pytest.fixture(scope="session")
def tiny_cifar_root(tmp_path_factory) -> Path:
    """A generated CIFAR-10 (320 train, 64 test images) in the real format."""
    return write_tiny_cifar(tmp_path_factory.mktemp("tiny_cifar"))


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """The real CIFAR-10 in the configured data folder; tests that need it skip when it is absent."""
    if not real_cifar_batch().is_file():
        pytest.skip(f"real CIFAR-10 not found under {SHARED_DATA} (--data-dir or ${DATA_ENV})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where ``conf/`` lies)."""
    return REPO_ROOT
