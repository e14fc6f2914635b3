"""In-memory images and their training order: :class:`FlatImageDataset`, :class:`EpochSeededSampler`
and :class:`ResumableLoader`."""
from __future__ import annotations

from typing import Any, Dict, Iterator, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

__all__ = ["FlatImageDataset", "EpochSeededSampler", "ResumableLoader"]


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
        #: entries of the order to leave out at the start of the next iteration only (a resume mid-epoch)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * self.SEED_STRIDE + self.epoch)
        order = torch.randperm(len(self.data_source), generator=g)
        if self.tag_epoch:  # epoch * N + index: the epoch reaches the dataset (and its workers)
            order += self.epoch * len(self.data_source)
        start, self.start = self.start, 0
        return iter(order[start:].tolist())

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
        return _SeededDistributedSampler(data_source, num_replicas=num_replicas, rank=rank, shuffle=True,
                                         seed=int(seed) * cls.SEED_STRIDE, drop_last=False, tag_epoch=tag_epoch)


class _SeededDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` that can yield ``epoch * N + index`` (``tag_epoch``, as in
    ``EpochSeededSampler``) and leave out the first ``start`` entries of one iteration."""

    def __init__(self, *args, tag_epoch: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tag_epoch = tag_epoch
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * len(self.dataset) if self.tag_epoch else 0
        start, self.start = self.start, 0
        indices = list(super().__iter__())[start:]
        return iter([offset + i for i in indices] if offset else indices)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that Lightning resumes in the middle of an epoch.

    Lightning saves the ``state_dict`` of a training loader that has one in every
    checkpoint, and gives it back to ``load_state_dict`` when a run restarts inside an
    epoch (after SIGTERM, or an epoch cut short by ``max_steps``). The state is the epoch
    being iterated and the batches served in it; the next iteration of that same epoch
    skips them, so the resumed run draws the batches the uninterrupted one would have. The
    sampler must be an :class:`EpochSeededSampler` (or its distributed form), whose order
    depends only on the seed and the epoch.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._resume: Dict[str, int] = {}

    def __iter__(self):
        skip = self._resume.get("served", 0) if self._resume.get("epoch") == self.sampler.epoch else 0
        self._resume = {}
        self.sampler.start = skip * self.batch_size
        self._served = skip
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": int(self.sampler.epoch), "served": int(self._served)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._resume = {"epoch": int(state_dict["epoch"]), "served": int(state_dict["served"])}
