"""CIFAR-10 in torchvision's on-disk format (``cifar-10-batches-py/``): :class:`CIFAR10DataModule`."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from .base import DataNotFoundError, ImageDataModule

__all__ = ["CIFAR10DataModule", "CIFAR10_MEAN", "CIFAR10_STD"]

# per-channel statistics of the CIFAR-10 training set (pixels in [0, 1])
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_FOLDER = "cifar-10-batches-py"
_FILES = ("batches.meta", "test_batch") + tuple(f"data_batch_{i}" for i in range(1, 6))


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (50 000 training and 10 000 test images, 3 x 32 x 32, 10 classes).

    Reads ``<data_dir>/cifar-10-batches-py/`` through torchvision, which checks the md5
    sums unless ``verify_checksums=False``, and downloads it there with ``download=True``.
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
        try:
            return _load_split(self.data_dir, train=train, verify_checksums=self.verify_checksums)
        except RuntimeError as err:
            raise DataNotFoundError(
                self.missing_message(f"torchvision refused the files: {err}; "
                                     "generated data needs --data.verify_checksums false")
            ) from None
        except (EOFError, pickle.UnpicklingError, KeyError, ValueError) as err:  # a truncated or foreign file
            raise self.format_error(f"a file in {self.data_folder.resolve()}",
                                    f"could not be read ({type(err).__name__}: {err})") from None

    def download_files(self) -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(self.data_dir), train=True, download=True)


def _load_split(root: Path, *, train: bool, verify_checksums: bool) -> Tuple[Tensor, Tensor]:
    """Read one split through torchvision (md5 checked unless ``verify_checksums=False``)."""
    from torchvision.datasets import CIFAR10

    cls = CIFAR10 if verify_checksums else _UncheckedCIFAR10
    ds = cls(str(root), train=train, download=False)
    # torchvision keeps (N, H, W, C); the files and the MLP use (C, H, W) row-major
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))).reshape(len(ds.data), -1)
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    return images, labels


def _files_present(root: Path) -> bool:
    folder = root / _FOLDER
    return all((folder / n).is_file() for n in _FILES)


try:  # torchvision is a hard requirement, but keep the import error readable
    from torchvision.datasets import CIFAR10 as _TVCIFAR10

    class _UncheckedCIFAR10(_TVCIFAR10):
        """torchvision's reader with the md5 check replaced by a presence check.

        For datasets written in the same on-disk format (the test suite's generated one).
        """

        def _check_integrity(self) -> bool:
            return _files_present(Path(self.root))

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

except ImportError:  # pragma: no cover
    _UncheckedCIFAR10 = None  # type: ignore[assignment]
