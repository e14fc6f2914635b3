"""CIFAR-10 in its python on-disk format (``cifar-10-batches-py/``): :class:`CIFAR10DataModule`."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from .base import ImageDataModule

__all__ = ["CIFAR10DataModule", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_MD5"]

# per-channel statistics of the CIFAR-10 training set (pixels in [0, 1])
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_FOLDER = "cifar-10-batches-py"
_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_FILE = "test_batch"
_FILES = ("batches.meta", _TEST_FILE) + _TRAIN_FILES

#: the md5 sums of the published files (those torchvision's ``datasets.CIFAR10`` checks)
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (50 000 training and 10 000 test images, 3 x 32 x 32, 10 classes).

    Reads ``<data_dir>/cifar-10-batches-py/`` (the python version of the data set, as
    torchvision downloads it) and downloads it there through torchvision with
    ``download=True``. Each batch file is checked as it is read, whatever
    ``verify_checksums`` says: it must unpickle completely (a truncated file does not)
    into a dictionary whose ``data`` is a uint8 array of shape ``(N, 3072)`` and whose
    ``labels`` are ``N`` integers in 0-9; a :class:`~lightning_gait.data.DataFormatError`
    names the file and what is wrong. ``verify_checksums`` also compares each file's md5
    sum with the published one (:data:`CIFAR10_MD5`).

    The arguments, the split, the order and the preprocessing are those of
    :class:`~lightning_gait.data.base.ImageDataModule`, whose docstring lists them.
    """

    name = "CIFAR-10"
    folder = _FOLDER
    files = _FILES
    input_shape = (3, 32, 32)
    num_classes = 10
    channel_mean = CIFAR10_MEAN
    channel_std = CIFAR10_STD

    def read_split(self, train: bool) -> Tuple[Tensor, Tensor]:
        parts = [self._read_batch(name) for name in (_TRAIN_FILES if train else (_TEST_FILE,))]
        images = np.concatenate([images for images, _ in parts])
        labels = np.concatenate([labels for _, labels in parts])
        # the files' rows are (C, H, W) row-major already, the order the networks read
        return torch.from_numpy(images), torch.from_numpy(labels).long()

    def download_files(self) -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(self.data_dir), train=True, download=True)

    # ------------------------------------------------------------------ reading one batch file
    def _read_batch(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """The uint8 images ``(N, 3072)`` and int64 labels ``(N,)`` of one batch file, checked."""
        path = self.data_folder / name
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise self.format_error(str(path), f"could not be read ({type(err).__name__}: {err})") from None
        try:
            entry = pickle.loads(raw, encoding="latin1")
        except Exception as err:  # a truncated or foreign file can fail in many ways
            raise self.format_error(str(path), f"is not a complete CIFAR-10 batch: it could not be unpickled "
                                               f"({type(err).__name__}: {err}); truncated or damaged?") from None
        if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
            keys = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
            raise self.format_error(str(path), f"holds {keys}, not a CIFAR-10 batch (a dictionary with 'data' "
                                               "and 'labels')")
        images, labels = entry["data"], entry["labels"]
        size = self.input_size
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise self.format_error(str(path), f"holds pixels of type {getattr(images, 'dtype', type(images).__name__)}, "
                                               "expected uint8 (0-255)")
        if images.ndim != 2 or images.shape[1] != size or images.shape[0] == 0:
            raise self.format_error(str(path), f"holds pixels of shape {images.shape}, expected (N, {size}) "
                                               "with N > 0: one row of 3 x 32 x 32 values per image")
        try:
            labels = np.asarray(labels)
        except Exception as err:
            raise self.format_error(str(path), f"holds labels that are not a list of integers ({err})") from None
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise self.format_error(str(path), f"holds labels of type {labels.dtype} and shape {labels.shape}, "
                                               "expected a list of integers")
        if labels.shape[0] != images.shape[0]:
            raise self.format_error(str(path), f"holds {labels.shape[0]} labels for {images.shape[0]} images")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise self.format_error(str(path), f"holds labels from {labels.min()} to {labels.max()}, "
                                               f"outside 0-{self.num_classes - 1}")
        if self.verify_checksums:
            self._check_md5(path, raw)
        return images, labels.astype(np.int64)

    def _check_md5(self, path: Path, raw: bytes) -> None:
        expected = CIFAR10_MD5.get(path.name)
        found = hashlib.md5(raw).hexdigest()
        if expected is not None and found != expected:
            raise self.format_error(str(path), f"has the md5 sum {found}, not that of CIFAR-10's {path.name} "
                                               f"({expected}): a damaged or different file (generated data "
                                               "needs --data.verify_checksums false)")
