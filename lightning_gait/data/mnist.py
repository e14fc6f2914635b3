"""MNIST and Fashion-MNIST in torchvision's on-disk format: :class:`MNISTDataModule`, :class:`FashionMNISTDataModule`.

The files are in the idx format of the MNIST distribution: a big-endian header (the
magic number, then one 32-bit size per dimension) followed by the uint8 values. Images
have the magic number 2051 (uint8, 3 dimensions: N x 28 x 28), labels 2049 (uint8, 1
dimension: N). torchvision keeps them, uncompressed, in ``<root>/MNIST/raw/`` and
``<root>/FashionMNIST/raw/``; the MNIST distribution itself ships them gzipped.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from .base import ImageDataModule

__all__ = [
    "MNISTDataModule", "FashionMNISTDataModule",
    "MNIST_MEAN", "MNIST_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
    "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC",
]

# statistics of the training sets (pixels in [0, 1])
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

#: magic numbers of idx files of uint8: 0x08 (uint8) * 256 + the number of dimensions
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

_SPLIT_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MNISTDataModule(ImageDataModule):
    """MNIST (60 000 training and 10 000 test images of digits, 1 x 28 x 28, 10 classes).

    Reads ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, the files
    torchvision's ``datasets.MNIST`` downloads and reads, or the same names ending in
    ``.gz``; downloads them there through torchvision with ``download=True``. Each file is
    checked as it is read (magic number, sizes, 28 x 28 images, labels 0-9, as many labels
    as images) and a :class:`~lightning_gait.data.DataFormatError` names the file that
    fails. ``verify_checksums`` checks the ``.gz`` files against the md5 sums torchvision
    lists; the uncompressed files have no published sums and are checked by format only.

    The arguments, the split, the order and the preprocessing are those of
    :class:`~lightning_gait.data.base.ImageDataModule`, whose docstring lists them.
    """

    name = "MNIST"
    folder = "MNIST/raw"
    files = _SPLIT_FILES[True] + _SPLIT_FILES[False]
    files_note = " (or the same names ending in .gz)"
    input_shape = (1, 28, 28)
    num_classes = 10
    channel_mean = MNIST_MEAN
    channel_std = MNIST_STD
    #: the torchvision dataset class that downloads the files and lists their md5 sums
    torchvision_class = "MNIST"

    def missing_files(self) -> Tuple[str, ...]:
        return tuple(name for name in self.files if self._find(name) is None)

    def read_split(self, train: bool) -> Tuple[Tensor, Tensor]:
        image_path, label_path = (self._find(name) for name in _SPLIT_FILES[train])
        images = self._read_idx(image_path, IDX_IMAGES_MAGIC, ndim=3)
        labels = self._read_idx(label_path, IDX_LABELS_MAGIC, ndim=1)
        if images.shape[1:] != self.input_shape[1:]:
            raise self.format_error(str(image_path), f"holds images of {images.shape[1]} x {images.shape[2]} pixels, "
                                                     f"expected {self.input_shape[1]} x {self.input_shape[2]}")
        if labels.shape[0] != images.shape[0]:
            raise self.format_error(str(label_path), f"holds {labels.shape[0]} labels for the "
                                                     f"{images.shape[0]} images of {image_path.name}")
        if labels.size and int(labels.max()) >= self.num_classes:
            raise self.format_error(str(label_path), f"holds labels up to {int(labels.max())}, "
                                                     f"outside 0-{self.num_classes - 1}")
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()

    def download_files(self) -> None:
        from torchvision import datasets

        getattr(datasets, self.torchvision_class)(str(self.data_dir), train=True, download=True)

    # ------------------------------------------------------------------ reading idx files
    def _find(self, name: str):
        """The file ``name`` in the data folder, uncompressed or else gzipped; ``None`` if neither."""
        for candidate in (self.data_folder / name, self.data_folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        return None

    def _read_idx(self, path: Path, magic: int, *, ndim: int) -> np.ndarray:
        """The uint8 array of an idx file, after checking its header against its length."""
        try:
            if path.name.endswith(".gz"):
                self._check_md5(path)
                with gzip.open(path, "rb") as f:
                    data = bytearray(f.read())
            else:
                data = bytearray(path.read_bytes())
        except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
            raise self.format_error(str(path), f"could not be read ({type(err).__name__}: {err})") from None
        header = 4 * (ndim + 1)
        what = "images" if ndim == 3 else "labels"
        if len(data) < header:
            raise self.format_error(str(path), f"is {len(data)} bytes long, shorter than the header of an idx file")
        found = int.from_bytes(data[:4], "big")
        if found != magic:
            raise self.format_error(str(path), f"starts with the magic number {found}, expected {magic} "
                                               f"(an idx file of uint8 {what}, {ndim} dimension{'s' * (ndim > 1)})")
        dims = tuple(int.from_bytes(data[4 * i: 4 * (i + 1)], "big") for i in range(1, ndim + 1))
        if len(data) - header != math.prod(dims):
            raise self.format_error(str(path), f"holds {len(data) - header} bytes after its header, which promises "
                                               f"{' x '.join(map(str, dims))} = {math.prod(dims)}")
        return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)

    def _check_md5(self, path: Path) -> None:
        """With ``verify_checksums``, refuse a ``.gz`` file whose md5 is not the one torchvision lists."""
        if not self.verify_checksums:
            return
        from torchvision import datasets
        from torchvision.datasets.utils import check_integrity

        md5 = dict(getattr(datasets, self.torchvision_class).resources).get(path.name)
        if md5 is not None and not check_integrity(str(path), md5):
            raise self.format_error(str(path), f"does not have the md5 sum of {self.name}'s {path.name} ({md5}); "
                                               "generated data needs --data.verify_checksums false")


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (60 000 training and 10 000 test images of clothes, 1 x 28 x 28, 10 classes).

    The files and their checks are those of :class:`MNISTDataModule`, in
    ``<data_dir>/FashionMNIST/raw/`` (torchvision's ``datasets.FashionMNIST``).
    """

    name = "Fashion-MNIST"
    folder = "FashionMNIST/raw"
    channel_mean = FASHION_MNIST_MEAN
    channel_std = FASHION_MNIST_STD
    torchvision_class = "FashionMNIST"
