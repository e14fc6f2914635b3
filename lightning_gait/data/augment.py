"""Random crop with zero padding and horizontal flip of uint8 images, keyed by sample.

The augmentation of a training image is a function of ``(seed, epoch, index)`` alone (the
index into the training set): not of the batch it lands in, the process that loads it or
the draws made before it. So a run resumed from a checkpoint, a DDP run (each rank loads
its own share) and a one-process run see the same augmented images. The epoch travels
with the index: the training sampler yields ``epoch * N + index``
(``EpochSeededSampler(tag_epoch=True)``), which also reaches DataLoader workers.

:func:`crop_flip` is the plain-tensor operation; :class:`AugmentedImageDataset` applies it
to the batches of a :class:`~lightning_gait.data.dataset.FlatImageDataset`.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from .dataset import FlatImageDataset

__all__ = ["sample_keys", "crop_flip", "AugmentedImageDataset"]

_MASK = 0x7FFFFFFF  # keep every product below 2**62: no int64 overflow


def _mix(x: Tensor) -> Tensor:
    """A few rounds of a 31-bit multiply-xorshift hash, elementwise on int64."""
    for mult in (1103515245, 2147483629, 1664525):
        x = (x * mult + 12345) & _MASK
        x = x ^ (x >> 13)
    return x


def sample_keys(seed: int, epoch: int, indices: Tensor) -> Tensor:
    """One 31-bit random key per sample, a function of ``(seed, epoch, index)`` only."""
    base = _mix(torch.tensor([int(seed) & _MASK], dtype=torch.int64))
    base = _mix(base ^ (int(epoch) & _MASK))
    return _mix(base ^ (indices.to(torch.int64) & _MASK))


def crop_flip(images: Tensor, keys: Tensor, *, padding: int, flip: bool) -> Tensor:
    """Crop each ``(C, H, W)`` image of ``images`` at a random offset of its zero-padded
    copy (``padding`` pixels on each side) and mirror it left-right with probability 1/2.

    ``keys`` (int64, one per image) decide the offsets and flips. Returns uint8 images of
    the input's shape; ``padding=0, flip=False`` returns them unchanged.
    """
    n, c, h, w = images.shape
    span = 2 * padding + 1
    dy, dx = keys % span, (keys >> 8) % span
    mirrored = ((keys >> 16) & 1).bool() & flip
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding)) if padding else images
    rows = dy[:, None] + torch.arange(h)[None, :]                                   # (n, h)
    cols = torch.arange(w)[None, :].expand(n, w)
    cols = torch.where(mirrored[:, None], (w - 1) - cols, cols) + dx[:, None]       # (n, w)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(c)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


class AugmentedImageDataset(FlatImageDataset):
    """A training set whose batches are cropped and flipped (:func:`crop_flip`).

    Indexed by the ``epoch * len(self) + index`` of a sampler made with ``tag_epoch=True``.
    """

    def __init__(self, images: Tensor, labels: Tensor, shape: Tuple[int, int, int], *,
                 seed: int, padding: int = 4, flip: bool = True) -> None:
        super().__init__(images, labels)
        self.shape, self.seed, self.padding, self.flip = tuple(shape), int(seed), int(padding), bool(flip)

    def __getitem__(self, index: int):
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, indices: Sequence[int]):
        tagged = torch.as_tensor(indices, dtype=torch.long)
        n = len(self)
        epochs, idx = tagged // n, tagged % n
        if not bool((epochs == epochs[0]).all()):
            raise ValueError("a batch spans two epochs: the sampler must tag each index with its epoch")
        keys = sample_keys(self.seed, int(epochs[0]), idx)
        images = self.images[idx].reshape(len(idx), *self.shape)
        out = crop_flip(images, keys, padding=self.padding, flip=self.flip)
        return out.reshape(len(idx), -1), self.labels[idx]

