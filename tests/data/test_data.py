"""CIFAR10DataModule on the generated dataset (and the real one when present)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from lightning_gait.data import CIFAR10DataModule, DataNotFoundError, EpochSeededSampler


def make_dm(root, **kwargs):
    dm = CIFAR10DataModule(str(root), verify_checksums=False, download=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_images_are_flattened_in_chw_order_and_scaled(tiny_cifar_root):
    dm = make_dm(tiny_cifar_root, val_size=0, batch_size=8)
    with open(tiny_cifar_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    images, labels = dm.data_train.images, dm.data_train.labels
    assert images.shape == (320, 3072) and images.dtype == torch.uint8
    # the file's rows are already (C, H, W) row-major; they must arrive unchanged
    assert np.array_equal(images[:64].numpy(), raw["data"])
    assert labels[:64].tolist() == raw["labels"]
    x = dm.preprocess(images[:4], torch.float64)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x, images[:4].double() / 255.0, rtol=0, atol=0)


def test_validation_split_is_seeded_and_disjoint(tiny_cifar_root):
    a = make_dm(tiny_cifar_root, val_size=50, split_seed=3)
    b = make_dm(tiny_cifar_root, val_size=50, split_seed=3)
    c = make_dm(tiny_cifar_root, val_size=50, split_seed=4)
    assert len(a.data_train) == 270 and len(a.data_val) == 50
    assert torch.equal(a.data_val.images, b.data_val.images)
    assert not torch.equal(a.data_val.images, c.data_val.images)
    train_rows = {bytes(r.numpy()) for r in a.data_train.images}
    assert not any(bytes(r.numpy()) in train_rows for r in a.data_val.images)


def test_val_size_zero_validates_on_the_test_set(tiny_cifar_root):
    dm = make_dm(tiny_cifar_root, val_size=0)
    assert torch.equal(dm.data_val.images, dm.data_test.images)
    assert len(dm.data_train) == 320


def test_val_size_too_large_is_refused(tiny_cifar_root):
    with pytest.raises(ValueError, match="val_size"):
        make_dm(tiny_cifar_root, val_size=320)


def test_per_channel_normalization(tiny_cifar_root):
    dm = make_dm(tiny_cifar_root, val_size=0, normalize_channels=True)
    x = dm.preprocess(dm.data_train.images[:2], torch.float64)
    red = dm.data_train.images[:2, :1024].double() / 255.0
    torch.testing.assert_close(x[:, :1024], (red - 0.4914) / 0.2470)


def test_batches_come_whole_and_in_epoch_seeded_order(tiny_cifar_root):
    dm = make_dm(tiny_cifar_root, val_size=0, batch_size=100, shuffle_seed=1)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSeededSampler)
    loader.sampler.set_epoch(0)
    first = [y.clone() for _, y in loader]
    loader.sampler.set_epoch(0)
    again = [y.clone() for _, y in loader]
    loader.sampler.set_epoch(1)
    other = [y.clone() for _, y in loader]
    assert [len(y) for y in first] == [100, 100, 100, 20]
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert not all(torch.equal(p, q) for p, q in zip(first, other))


def test_missing_data_names_the_folder_and_the_ways_out(tmp_path):
    dm = CIFAR10DataModule(str(tmp_path / "nothing"), download=False)
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str((tmp_path / "nothing" / "cifar-10-batches-py").resolve()) in message
    assert "--data.data_dir" in message and "internet" in message


def test_generated_data_fails_checksums_with_a_hint(tiny_cifar_root):
    dm = CIFAR10DataModule(str(tiny_cifar_root), download=False, verify_checksums=True)
    with pytest.raises(DataNotFoundError, match="verify_checksums"):
        dm.setup("fit")


def test_bad_arguments_name_themselves():
    for kwargs, name in [({"batch_size": 0}, "batch_size"), ({"val_size": -1}, "val_size"), ({"num_workers": -2}, "num_workers")]:
        with pytest.raises(ValueError, match=name):
            CIFAR10DataModule(**kwargs)


def test_real_cifar10_loads_with_checksums(shared_data_root):
    dm = CIFAR10DataModule(str(shared_data_root), download=False, val_size=5000)
    dm.setup("fit")
    assert len(dm.data_train) == 45000 and len(dm.data_val) == 5000 and len(dm.data_test) == 10000
    assert dm.data_train.images.shape[1] == 3072
    assert sorted(torch.bincount(dm.data_test.labels).tolist()) == [1000] * 10
