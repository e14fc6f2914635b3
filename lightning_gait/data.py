"""CIFAR-10 as a LightningDataModule, held in memory as uint8 and flattened for the MLP.

Preprocessing follows ``docs/gait-prop.md`` ("Reference hyperparameters"): pixels
divided by 255, no mean subtraction (per-channel normalization is an option). Images
are flattened row-major in ``(C, H, W)`` order, as ``InvertibleMLP`` expects, and cast
to the dtype that the trainer's precision asks for (float64 under ``precision: 64-true``)
on the device, after transfer, so that only bytes cross the host-device boundary.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

__all__ = ["CIFAR10DataModule", "DataNotFoundError", "FlatImageDataset", "EpochSeededSampler", "CIFAR10_MEAN", "CIFAR10_STD"]

# per-channel statistics of the CIFAR-10 training set (pixels in [0, 1])
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_FOLDER = "cifar-10-batches-py"


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 is not on disk and could not be downloaded."""


def _missing_message(root: Path, reason: str) -> str:
    return (
        f"CIFAR-10 was not found in {(root / _FOLDER).resolve()} ({reason}).\n"
        "Two ways out:\n"
        f"  1. point to a folder that holds {_FOLDER}/, e.g. --data.data_dir ../shared/data\n"
        "  2. run once on a machine with internet access (with --data.download true, the default),\n"
        "     which downloads it there, and copy the folder over."
    )


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


def _collate_batch(batch):
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

    def __init__(self, data_source, *, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * self.SEED_STRIDE + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=g).tolist())

    @classmethod
    def distributed(cls, data_source, *, seed: int, num_replicas: int, rank: int) -> DistributedSampler:
        """This order split over ``num_replicas`` processes: a ``DistributedSampler``.

        ``DistributedSampler(seed=s)`` draws epoch ``e``'s permutation with seed ``s + e``;
        with ``s = seed * SEED_STRIDE`` it is this sampler's permutation, and rank ``r``
        takes its entries ``r, r + num_replicas, ...``. So the union of the ranks' ``k``-th
        batches of size ``B`` is the ``k``-th batch of size ``B * num_replicas`` of a
        one-process run (up to the padding of the last batch when ``num_replicas`` does
        not divide the data set).
        """
        return DistributedSampler(data_source, num_replicas=num_replicas, rank=rank, shuffle=True,
                                  seed=int(seed) * cls.SEED_STRIDE, drop_last=False)


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
    names = ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
    return all((folder / n).is_file() for n in names)


try:  # torchvision is a hard requirement, but keep the import error readable
    from torchvision.datasets import CIFAR10 as _TVCIFAR10

    class _UncheckedCIFAR10(_TVCIFAR10):
        """torchvision's reader with the md5 check replaced by a presence check.

        For datasets written in the same on-disk format (the test suite's generated one).
        """

        def _check_integrity(self) -> bool:
            return _files_present(Path(self.root))

        def _load_meta(self) -> None:
            import pickle

            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

except ImportError:  # pragma: no cover
    _UncheckedCIFAR10 = None  # type: ignore[assignment]


_PRECISION_DTYPES = {
    "64": torch.float64,
    "64-true": torch.float64,
    "32": torch.float32,
    "32-true": torch.float32,
    "16-true": torch.float16,
    "bf16-true": torch.bfloat16,
}


class CIFAR10DataModule(pl.LightningDataModule):
    """CIFAR-10 for the flattened-input MLPs of lightning-gait.

    Lightning's contract: ``prepare_data`` runs on one process per node and only
    downloads; ``setup`` runs on every process and builds the splits; the dataloader
    hooks return loaders; ``on_after_batch_transfer`` turns uint8 batches into the
    training dtype on the device.

    Args:
        data_dir: folder that holds (or will hold) ``cifar-10-batches-py/``.
        download: download when missing (needs internet).
        batch_size: per-process batch size (the global batch under DDP is
            ``batch_size * world_size``; with ``256 / world_size`` the ranks' batches
            together are the batches of a one-process run with 256).
        num_workers: DataLoader workers (0 is fastest here: the data is in memory).
        val_size: images of the training set held out for validation, chosen with
            ``split_seed``; 0 validates on the test set, as the reference code did.
        split_seed: seed of the validation split.
        shuffle_seed: seed of the per-epoch training order (see :class:`EpochSeededSampler`;
            under DDP split over the ranks by :meth:`EpochSeededSampler.distributed`).
        normalize_channels: subtract the per-channel mean and divide by the std after ``/255``.
        verify_checksums: check torchvision's md5 sums (turn off only for generated data).
        pin_memory: pin host memory (useful with a GPU).
    """

    #: one image, ``(C, H, W)``; ``input_size`` is its flattened length (the network's input)
    input_shape = (3, 32, 32)
    input_size = 3 * 32 * 32
    num_classes = 10

    def __init__(
        self,
        data_dir: str = "./data",
        download: bool = True,
        batch_size: int = 256,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        normalize_channels: bool = False,
        verify_checksums: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.split_seed = split_seed
        self.shuffle_seed = shuffle_seed
        self.normalize_channels = normalize_channels
        self.verify_checksums = verify_checksums
        self.pin_memory = pin_memory
        self.num_classes = 10
        self.in_features = 3 * 32 * 32
        self.data_train: Optional[FlatImageDataset] = None
        self.data_val: Optional[FlatImageDataset] = None
        self.data_test: Optional[FlatImageDataset] = None

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Download once (on one process per node) if the files are missing."""
        if _files_present(self.data_dir):
            return
        if not self.download:
            raise DataNotFoundError(_missing_message(self.data_dir, "download is off"))
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(self.data_dir), train=True, download=True)
        except Exception as err:  # no network, proxy, disk full...
            raise DataNotFoundError(
                _missing_message(self.data_dir, f"the download failed: {type(err).__name__}: {err}")
            ) from None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.data_train is not None:
            return
        if not _files_present(self.data_dir):
            raise DataNotFoundError(_missing_message(self.data_dir, "files missing"))
        try:
            train_images, train_labels = _load_split(self.data_dir, train=True, verify_checksums=self.verify_checksums)
            test_images, test_labels = _load_split(self.data_dir, train=False, verify_checksums=self.verify_checksums)
        except RuntimeError as err:
            raise DataNotFoundError(
                _missing_message(self.data_dir, f"torchvision refused the files: {err}; "
                                 "generated data needs --data.verify_checksums false")
            ) from None
        if self.val_size >= len(train_labels):
            raise ValueError(f"val_size={self.val_size} leaves no training data (the training set has {len(train_labels)})")
        if self.val_size > 0:
            g = torch.Generator().manual_seed(self.split_seed)
            perm = torch.randperm(len(train_labels), generator=g)
            val_idx, train_idx = perm[: self.val_size].sort().values, perm[self.val_size :].sort().values
            self.data_train = FlatImageDataset(train_images[train_idx], train_labels[train_idx])
            self.data_val = FlatImageDataset(train_images[val_idx], train_labels[val_idx])
        else:
            self.data_train = FlatImageDataset(train_images, train_labels)
            self.data_val = FlatImageDataset(test_images, test_labels)
        self.data_test = FlatImageDataset(test_images, test_labels)

    def _loader(self, dataset: FlatImageDataset, *, train: bool) -> DataLoader:
        trainer = self.trainer
        if not train:
            sampler = SequentialSampler(dataset)  # Lightning shards it under DDP
        elif trainer is not None and trainer.world_size > 1:
            # our own DistributedSampler (Lightning keeps it): the order of shuffle_seed, not of seed_everything
            sampler = EpochSeededSampler.distributed(dataset, seed=self.shuffle_seed,
                                                     num_replicas=trainer.world_size, rank=trainer.global_rank)
        else:
            sampler = EpochSeededSampler(dataset, seed=self.shuffle_seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_collate_batch,
            pin_memory=self.pin_memory,
            drop_last=False,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, train=False)

    # ------------------------------------------------------------------ preprocessing
    def target_dtype(self) -> torch.dtype:
        """The floating dtype of the trainer's precision (float32 without a trainer)."""
        trainer = self.trainer
        if trainer is None:
            return torch.float32
        return _PRECISION_DTYPES.get(str(trainer.precision), torch.float32)

    def preprocess(self, images: Tensor, dtype: torch.dtype) -> Tensor:
        """uint8 ``(N, 3072)`` -> ``dtype`` in [0, 1] (optionally normalized per channel)."""
        x = images.to(dtype) / 255.0
        if self.normalize_channels:
            mean = torch.tensor(CIFAR10_MEAN, dtype=dtype, device=x.device).repeat_interleave(32 * 32)
            std = torch.tensor(CIFAR10_STD, dtype=dtype, device=x.device).repeat_interleave(32 * 32)
            x = (x - mean) / std
        return x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        return self.preprocess(images, self.target_dtype()), labels
