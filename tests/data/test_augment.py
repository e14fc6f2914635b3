"""Random crop and flip: the operation against a per-image reference, keyed by sample only
(the same whatever the batch, the process or the resume), wired into the DataModule."""
from __future__ import annotations

import torch
import pytest

from lightning_gait.data import CIFAR10DataModule
from lightning_gait.data.augment import AugmentedImageDataset, crop_flip, sample_keys
from lightning_gait.data.dataset import EpochSeededSampler, FlatImageDataset


def _reference(image, key, padding, flip):
    c, h, w = image.shape
    span = 2 * padding + 1
    dy, dx, mirror = int(key % span), int((key >> 8) % span), bool((key >> 16) & 1) and flip
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype)
    padded[:, padding:padding + h, padding:padding + w] = image
    if mirror:  # mirror the crop window, i.e. read the columns of the crop right to left
        return padded[:, dy:dy + h, dx:dx + w].flip(-1)
    return padded[:, dy:dy + h, dx:dx + w]


def test_crop_flip_matches_a_per_image_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    keys = sample_keys(5, 2, torch.arange(64))
    out = crop_flip(images, keys, padding=2, flip=True)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for img, key, got in zip(images, keys, out):
        assert torch.equal(got, _reference(img, int(key), 2, True))
    assert torch.equal(crop_flip(images, keys, padding=0, flip=False), images)


def test_keys_depend_on_seed_epoch_and_index_only():
    idx = torch.arange(1000)
    keys = sample_keys(0, 3, idx)
    perm = torch.randperm(1000)
    assert torch.equal(sample_keys(0, 3, idx[perm]), keys[perm])
    assert not torch.equal(sample_keys(0, 4, idx), keys) and not torch.equal(sample_keys(1, 3, idx), keys)
    images = torch.zeros(1000, 1, 4, 4, dtype=torch.uint8)
    images[:, :, :, 0] = 1  # the left column marks the flip
    out = crop_flip(images, keys, padding=1, flip=True)
    # offsets cover the range and about half the images are mirrored
    span = 3
    assert set((keys % span).tolist()) == {0, 1, 2} and set(((keys >> 8) % span).tolist()) == {0, 1, 2}
    mirrored = ((keys >> 16) & 1).float().mean().item()
    assert 0.45 < mirrored < 0.55
    assert out.sum() > 0


def _batches(sampler, dataset, batch):
    order = list(iter(sampler))
    return [dataset.__getitems__(order[i:i + batch]) for i in range(0, len(order), batch)]


def test_ddp_ranks_and_a_resume_see_the_images_of_one_process():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 3 * 6 * 6), dtype=torch.uint8, generator=g)
    labels = torch.arange(40)
    ds = AugmentedImageDataset(images, labels, (3, 6, 6), seed=7, padding=2, flip=True)
    one = EpochSeededSampler(ds, seed=7, tag_epoch=True)
    one.set_epoch(3)
    whole = {int(y): x for xs, ys in _batches(one, ds, 8) for x, y in zip(xs, ys)}
    for rank in range(2):
        sampler = EpochSeededSampler.distributed(ds, seed=7, num_replicas=2, rank=rank, tag_epoch=True)
        sampler.set_epoch(3)
        for xs, ys in _batches(sampler, ds, 4):
            for x, y in zip(xs, ys):
                assert torch.equal(x, whole[int(y)])
    again = EpochSeededSampler(ds, seed=7, tag_epoch=True)  # a fresh sampler, as after a resume
    again.set_epoch(3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(_batches(again, ds, 8), _batches(one, ds, 8)))
    one.set_epoch(4)
    assert not torch.equal(torch.cat([b[0] for b in _batches(one, ds, 8)]).sort(0).values,
                           torch.cat(list(whole.values())).reshape(40, -1).sort(0).values)


def test_datamodule_augments_training_batches_only(tiny_cifar_root):
    plain = CIFAR10DataModule(data_dir=str(tiny_cifar_root), download=False, verify_checksums=False,
                              batch_size=16, val_size=16)
    aug = CIFAR10DataModule(data_dir=str(tiny_cifar_root), download=False, verify_checksums=False,
                            batch_size=16, val_size=16, crop_padding=4, flip=True)
    plain.setup("fit"), aug.setup("fit")
    assert isinstance(aug.data_train, AugmentedImageDataset) and type(plain.data_train) is FlatImageDataset
    x_aug, y_aug = next(iter(aug.train_dataloader()))
    x, y = next(iter(plain.train_dataloader()))
    assert torch.equal(y, y_aug) and x.shape == x_aug.shape and not torch.equal(x, x_aug)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain.val_dataloader(), aug.val_dataloader()))
    with pytest.raises(ValueError, match="crop_padding"):
        CIFAR10DataModule(crop_padding=-1)
