"""In-memory images and their training order: :class:`FlatImageDataset` and :class:`EpochSeededSampler`."""
from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, RandomSampler

__all__ = ["FlatImageDataset", "EpochSeededSampler"]


class FlatImageDataset(Dataset):
    """Images as one ``(N, C*H*W)`` uint8 tensor and labels as int64; batched indexing.

    ``__getitems__`` lets the DataLoader fetch a whole batch with one index operation
    instead of one Python call per image.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dim() != 2 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> Tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx]


def collate_batch(batch):
    """Pass a batch made by ``__getitems__`` through; stack one made item by item."""
    if isinstance(batch, tuple):
        return batch
    images, labels = zip(*batch)
    return torch.stack(images), torch.stack(labels)


class EpochSeededSampler(RandomSampler):
    """A random order that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` at every epoch, so a run resumed from a checkpoint sees
    the very batches an uninterrupted run would. Under DDP the DataModule uses
    :meth:`distributed` instead, which shares this order.
    """

    #: epoch ``e``'s permutation is ``torch.randperm`` seeded with ``seed * SEED_STRIDE + e``
    SEED_STRIDE = 100_003

    def __init__(self, data_source, *, seed: int = 0, tag_epoch: bool = False) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0
        self.tag_epoch = tag_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * self.SEED_STRIDE + self.epoch)
        order = torch.randperm(len(self.data_source), generator=g)
        if self.tag_epoch:  # epoch * N + index: the epoch reaches the dataset (and its workers)
            order += self.epoch * len(self.data_source)
        return iter(order.tolist())

    @classmethod
    def distributed(cls, data_source, *, seed: int, num_replicas: int, rank: int,
                    tag_epoch: bool = False) -> DistributedSampler:
        """This order split over ``num_replicas`` processes: a ``DistributedSampler``.

        ``DistributedSampler(seed=s)`` draws epoch ``e``'s permutation with seed ``s + e``;
        with ``s = seed * SEED_STRIDE`` it is this sampler's permutation, and rank ``r``
        takes its entries ``r, r + num_replicas, ...``. So the union of the ranks' ``k``-th
        batches of size ``B`` is the ``k``-th batch of size ``B * num_replicas`` of a
        one-process run (up to the padding of the last batch when ``num_replicas`` does
        not divide the data set). ``tag_epoch`` as in the one-process sampler.
        """
        return (_EpochTaggedDistributedSampler if tag_epoch else DistributedSampler)(data_source, num_replicas=num_replicas, rank=rank, shuffle=True,
                                  seed=int(seed) * cls.SEED_STRIDE, drop_last=False)


class _EpochTaggedDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` yielding ``epoch * N + index`` (see ``EpochSeededSampler``)."""

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * len(self.dataset)
        return (offset + i for i in super().__iter__())
