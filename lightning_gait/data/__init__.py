"""Image data sets as LightningDataModules, held in memory as uint8 and flattened for the MLPs.

- :class:`ImageDataModule` (``base.py``): the shared machinery and the data contract
  (``input_shape``, ``input_size``, ``num_classes``) that every data set declares.
- :class:`CIFAR10DataModule` (``cifar.py``): CIFAR-10, 3 x 32 x 32.
- :class:`MNISTDataModule`, :class:`FashionMNISTDataModule` (``mnist.py``): 1 x 28 x 28.
- :class:`FlatImageDataset`, :class:`EpochSeededSampler` (``dataset.py``): the in-memory
  images and their epoch-seeded order.
"""
from .base import DataFormatError, DataNotFoundError, DataSplitError, ImageDataModule
from .cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule
from .dataset import EpochSeededSampler, FlatImageDataset
from .mnist import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_MEAN,
    MNIST_STD,
    FashionMNISTDataModule,
    MNISTDataModule,
)

__all__ = [
    "ImageDataModule", "CIFAR10DataModule", "MNISTDataModule", "FashionMNISTDataModule",
    "DataNotFoundError", "DataFormatError", "DataSplitError", "FlatImageDataset", "EpochSeededSampler",
    "CIFAR10_MEAN", "CIFAR10_STD", "MNIST_MEAN", "MNIST_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
]
