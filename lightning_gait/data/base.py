"""The machinery shared by lightning-gait's image data sets: :class:`ImageDataModule`.

Preprocessing follows ``docs/gait-prop.md`` ("Reference hyperparameters"): pixels
divided by 255, no mean subtraction (per-channel normalization is an option). Images
are flattened row-major in ``(C, H, W)`` order, as ``InvertibleMLP`` expects, and cast
to the dtype that the trainer's precision asks for (float64 under ``precision: 64-true``)
on the device, after transfer, so that only bytes cross the host-device boundary.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Dict, Optional, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler

from ..errors import UserError
from .augment import AugmentedImageDataset
from .dataset import EpochSeededSampler, FlatImageDataset, ResumableLoader, collate_batch

__all__ = ["ImageDataModule", "DataNotFoundError", "DataFormatError", "DataSplitError"]


class DataNotFoundError(FileNotFoundError, UserError):
    """A data set is not on disk (or not readable) and could not be downloaded."""


class DataFormatError(DataNotFoundError):
    """A data set's files are on disk but do not hold what they should (format, shape, labels)."""


class DataSplitError(UserError, ValueError):
    """Split sizes that the data set cannot give (a validation set as large as the training set)."""


_PRECISION_DTYPES = {
    "64": torch.float64,
    "64-true": torch.float64,
    "32": torch.float32,
    "32-true": torch.float32,
    "16-true": torch.float16,
    "bf16-true": torch.bfloat16,
}


class ImageDataModule(pl.LightningDataModule):
    """A labelled image data set, held in memory as uint8 and flattened for the MLPs of lightning-gait.

    The base class owns everything that does not depend on the files: the seeded
    train/validation split, the epoch-seeded training order (:class:`EpochSeededSampler`,
    split over the ranks under DDP), the dataloaders, the cast to the trainer's dtype
    (with optional per-channel normalization), the missing-data error and the checks of
    what was read. A subclass says which data set it is and how to read its files.

    Data contract. Class attributes, readable without an instance (the CLI sizes a
    network from them before building anything):

    - ``input_shape``: ``(C, H, W)`` of one image. Batches arrive flattened to
      ``(N, input_size)``, row-major in this order (what ``InvertibleMLP`` expects).
    - ``input_size``: ``C * H * W``, set from ``input_shape`` when the subclass is defined
      (``in_features`` is the same number, under ``InvertibleMLP``'s name).
    - ``num_classes``: labels are integers in ``[0, num_classes)``.

    Also declared by each subclass: ``name`` (for messages), ``folder`` (where the files
    lie, relative to ``data_dir``), ``files`` (their names there), ``channel_mean`` and
    ``channel_std`` (training-set statistics of pixels in [0, 1], for
    ``normalize_channels``; ``None`` where unknown).

    A new data set sets these attributes and overrides :meth:`read_split`; override
    :meth:`download_files` to support ``download=True`` and :meth:`missing_files` when a
    file may come in several forms. For example::

        class TinyImagesDataModule(ImageDataModule):
            name = "Tiny images"
            folder = "tiny-images"
            files = ("train.npz", "test.npz")
            input_shape = (3, 16, 16)
            num_classes = 5

            def read_split(self, train):
                with np.load(self.data_folder / ("train.npz" if train else "test.npz")) as f:
                    return torch.from_numpy(f["images"]), torch.from_numpy(f["labels"]).long()

    ``read_split`` returns uint8 images, ``(N, C, H, W)`` or already flattened to
    ``(N, C*H*W)`` in that order, and int64 labels ``(N,)``; :meth:`setup` checks them
    against the contract and raises :class:`DataFormatError` where they do not fit.

    Lightning's contract: ``prepare_data`` runs on one process per node and only
    downloads; ``setup`` runs on every process and builds the splits; the dataloader
    hooks return loaders; ``on_after_batch_transfer`` turns uint8 batches into the
    training dtype on the device.

    Args:
        data_dir: folder that holds (or will hold) the data set's ``folder``
            (``cifar-10-batches-py/`` for CIFAR-10, ``MNIST/raw/`` for MNIST).
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
        verify_checksums: check the published checksums of the files where the data set
            has them (turn off only for generated data).
        pin_memory: pin host memory (useful with a GPU).
        crop_padding: training images are cropped at a random offset of their copy padded
            with this many zero pixels on each side (0: no cropping).
        flip: training images are mirrored left-right with probability 1/2. The crop and
            flip of an image depend only on ``(shuffle_seed, epoch, its index)``
            (:mod:`lightning_gait.data.augment`): the same on resume and under DDP.
        test_every_epoch: evaluate the test set with each validation, logged as ``test/loss`` and
            ``test/acc`` (a curve to report; choices stay on ``val/``).
    """

    #: the data set's name in messages
    name: ClassVar[str] = "image data"
    #: where the files lie, relative to ``data_dir``
    folder: ClassVar[str] = ""
    #: the files expected in ``folder``
    files: ClassVar[Tuple[str, ...]] = ()
    #: added to the list of ``files`` in the missing-data message (other accepted forms)
    files_note: ClassVar[str] = ""
    #: ``(C, H, W)`` of one image
    input_shape: ClassVar[Optional[Tuple[int, int, int]]] = None
    #: ``C * H * W`` (set from ``input_shape``)
    input_size: ClassVar[Optional[int]] = None
    #: ``input_size`` under ``InvertibleMLP``'s name
    in_features: ClassVar[Optional[int]] = None
    #: labels lie in ``[0, num_classes)``
    num_classes: ClassVar[Optional[int]] = None
    #: per-channel mean and std of the training set's pixels in [0, 1]
    channel_mean: ClassVar[Optional[Tuple[float, ...]]] = None
    channel_std: ClassVar[Optional[Tuple[float, ...]]] = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.input_shape is not None:
            shape = tuple(int(d) for d in cls.input_shape)
            if len(shape) != 3 or min(shape) < 1:
                raise TypeError(f"{cls.__name__}.input_shape must be (C, H, W) of positive sizes, got {cls.input_shape}")
            cls.input_shape = shape
            cls.input_size = cls.in_features = math.prod(shape)

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
        test_every_epoch: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
    ) -> None:
        super().__init__()
        if self.input_shape is None or self.num_classes is None:
            raise TypeError(f"{type(self).__name__} must declare the class attributes input_shape and num_classes")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if normalize_channels and (self.channel_mean is None or self.channel_std is None):
            raise ValueError(f"normalize_channels needs per-channel statistics, which {type(self).__name__} lacks")
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
        self.test_every_epoch = test_every_epoch
        self.crop_padding = crop_padding
        self.flip = flip
        self.data_train: Optional[FlatImageDataset] = None
        self.data_val: Optional[FlatImageDataset] = None
        self.data_test: Optional[FlatImageDataset] = None

    # ------------------------------------------------------------------ what a subclass provides
    @property
    def data_folder(self) -> Path:
        """``data_dir / folder``: where the files lie."""
        return self.data_dir / self.folder

    def missing_files(self) -> Tuple[str, ...]:
        """The names of ``files`` that are not in :attr:`data_folder`."""
        return tuple(name for name in self.files if not (self.data_folder / name).is_file())

    def files_present(self) -> bool:
        """Whether every one of ``files`` is in :attr:`data_folder`."""
        return not self.missing_files()

    def read_split(self, train: bool) -> Tuple[Tensor, Tensor]:
        """uint8 images ``(N, C, H, W)`` or ``(N, C*H*W)`` and int64 labels ``(N,)`` of one split.

        Called by :meth:`setup` once :meth:`files_present` holds; raise
        :class:`DataFormatError`, naming the file, where a file cannot be read.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement read_split")

    def download_files(self) -> None:
        """Download the files into :attr:`data_folder` (called by :meth:`prepare_data` when missing)."""
        raise NotImplementedError(f"{type(self).__name__} cannot download {self.name}")

    # ------------------------------------------------------------------ messages and checks
    def _check_data_dir(self) -> None:
        """Refuse a ``data_dir`` that is a file: it can neither hold the data nor receive it."""
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise DataNotFoundError(f"--data.data_dir {self.data_dir.resolve()} is a file, not a folder: point it at "
                                    f"the folder that holds (or is to hold) {self.folder}/")

    def _missing_reason(self) -> str:
        """Which files are missing, when some of them are there (else: all of them)."""
        missing = self.missing_files()
        if len(missing) == len(self.files):
            return "files missing"
        return f"{', '.join(missing)} missing, the other files present"

    def missing_message(self, reason: str) -> str:
        """The missing-data message: the folder and files expected, and the two ways out."""
        return (
            f"{self.name} was not found in {self.data_folder.resolve()} ({reason}).\n"
            f"Expected there: {', '.join(self.files)}{self.files_note}.\n"
            "Two ways out:\n"
            f"  1. point to a folder that holds {self.folder}/, e.g. --data.data_dir ../shared/data\n"
            "  2. run once on a machine with internet access (with --data.download true, the default),\n"
            "     which downloads it there, and copy the folder over."
        )

    def format_error(self, where: str, problem: str) -> DataFormatError:
        """A :class:`DataFormatError` saying what is wrong with ``where`` (a file or a split)."""
        return DataFormatError(
            f"{self.name}: {where} {problem}.\n"
            "Replace the files: download them again (--data.download true, where internet is "
            f"available) or copy them into {self.data_folder.resolve()}."
        )

    def _read_checked(self, *, train: bool) -> Tuple[Tensor, Tensor]:
        """:meth:`read_split`, checked against the data contract; images flattened to ``(N, input_size)``."""
        images, labels = self.read_split(train)
        where = f"the {'training' if train else 'test'} split read from {self.data_folder.resolve()}"
        if not isinstance(images, Tensor) or images.dtype != torch.uint8:
            raise self.format_error(where, f"has images of type {getattr(images, 'dtype', type(images))}, not torch.uint8")
        n = images.shape[0] if images.dim() > 0 else 0
        if n == 0 or tuple(images.shape[1:]) not in (self.input_shape, (self.input_size,)):
            raise self.format_error(where, f"has images of shape {tuple(images.shape)}, expected "
                                           f"(N, {', '.join(map(str, self.input_shape))}) or (N, {self.input_size}) with N > 0")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (n,):
            raise self.format_error(where, f"has labels of {getattr(labels, 'dtype', type(labels))} and shape "
                                           f"{tuple(getattr(labels, 'shape', ()))}, expected torch.int64 of shape ({n},)")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            raise self.format_error(where, f"has labels in [{low}, {high}], outside [0, {self.num_classes - 1}]")
        return images.reshape(n, self.input_size), labels

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Download once (on one process per node) if the files are missing."""
        self._check_data_dir()
        if self.files_present():
            return
        if not self.download:
            raise DataNotFoundError(self.missing_message(f"{self._missing_reason()}; download is off"))
        reason = self._missing_reason()
        try:
            self.download_files()
        except Exception as err:  # no network, proxy, disk full...
            raise DataNotFoundError(
                self.missing_message(f"{reason}; the download failed: {type(err).__name__}: {err}")
            ) from None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.data_train is not None:
            return
        self._check_data_dir()
        if not self.files_present():
            raise DataNotFoundError(self.missing_message(self._missing_reason()))
        train_images, train_labels = self._read_checked(train=True)
        test_images, test_labels = self._read_checked(train=False)
        if self.val_size >= len(train_labels):
            raise DataSplitError(
                f"--data.val_size {self.val_size} leaves no training data: the training set of {self.name} in "
                f"{self.data_folder.resolve()} has {len(train_labels)} images; hold out fewer "
                "(--data.val_size 0 validates on the test set)"
            )
        if self.val_size > len(train_labels) // 2:  # base.yaml's 5,000 on a small data set of one's own
            rank_zero_warn(f"--data.val_size {self.val_size} holds out {self.val_size} of the {len(train_labels)} "
                           f"training images of {self.name} ({100 * self.val_size / len(train_labels):.0f}%); set "
                           "--data.val_size for this data set (0 validates on the test set)")
        if self.val_size > 0:
            g = torch.Generator().manual_seed(self.split_seed)
            perm = torch.randperm(len(train_labels), generator=g)
            val_idx, train_idx = perm[: self.val_size].sort().values, perm[self.val_size :].sort().values
            self.data_train = self._training_set(train_images[train_idx], train_labels[train_idx])
            self.data_val = FlatImageDataset(train_images[val_idx], train_labels[val_idx])
        else:
            self.data_train = self._training_set(train_images, train_labels)
            self.data_val = FlatImageDataset(test_images, test_labels)
        self.data_test = FlatImageDataset(test_images, test_labels)

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def _training_set(self, images: Tensor, labels: Tensor) -> FlatImageDataset:
        if not self.augments:
            return FlatImageDataset(images, labels)
        return AugmentedImageDataset(images, labels, self.input_shape, seed=self.shuffle_seed,
                                     padding=self.crop_padding, flip=self.flip)

    def _loader(self, dataset: FlatImageDataset, *, train: bool) -> DataLoader:
        trainer = self.trainer
        if not train:
            sampler = SequentialSampler(dataset)  # Lightning shards it under DDP
        elif trainer is not None and trainer.world_size > 1:
            # our own DistributedSampler (Lightning keeps it): the order of shuffle_seed, not of seed_everything
            sampler = EpochSeededSampler.distributed(dataset, seed=self.shuffle_seed,
                                                     num_replicas=trainer.world_size, rank=trainer.global_rank,
                                                     tag_epoch=self.augments)
        else:
            sampler = EpochSeededSampler(dataset, seed=self.shuffle_seed, tag_epoch=self.augments)
        return (ResumableLoader if train else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            pin_memory=self.pin_memory,
            drop_last=False,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, train=True)

    def val_dataloader(self):
        """The validation loader; with ``test_every_epoch``, the test loader after it, so
        that each validation also reports ``test/acc`` (for curves: choices stay on ``val/``)."""
        val = self._loader(self.data_val, train=False)
        return [val, self._loader(self.data_test, train=False)] if self.test_every_epoch else val

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, train=False)

    def state_dict(self) -> Dict[str, Any]:
        """Empty: the batches are a function of the hyperparameters and the epoch.

        The split depends on ``(val_size, split_seed)``, the training order on
        ``(shuffle_seed, epoch)``; Lightning restores the epoch from a checkpoint and
        passes it to the sampler's ``set_epoch``, so a run resumed from the end of an
        epoch (or inside one: :class:`~lightning_gait.data.dataset.ResumableLoader`) sees the
        batches an uninterrupted run would. (An empty state writes no DataModule entry.)
        """
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Accept the (empty) state of :meth:`state_dict`."""

    # ------------------------------------------------------------------ preprocessing
    def target_dtype(self) -> torch.dtype:
        """The floating dtype of the trainer's precision (float32 without a trainer)."""
        trainer = self.trainer
        if trainer is None:
            return torch.float32
        return _PRECISION_DTYPES.get(str(trainer.precision), torch.float32)

    def preprocess(self, images: Tensor, dtype: torch.dtype) -> Tensor:
        """uint8 ``(N, input_size)`` -> ``dtype`` in [0, 1] (optionally normalized per channel)."""
        x = images.to(dtype) / 255.0
        if self.normalize_channels:
            pixels = self.input_shape[1] * self.input_shape[2]
            mean = torch.tensor(self.channel_mean, dtype=dtype, device=x.device).repeat_interleave(pixels)
            std = torch.tensor(self.channel_std, dtype=dtype, device=x.device).repeat_interleave(pixels)
            x = (x - mean) / std
        return x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        return self.preprocess(images, self.target_dtype()), labels
