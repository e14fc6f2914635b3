"""MNISTDataModule and FashionMNISTDataModule on generated idx files; the data contract of every DataModule."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from conftest import write_idx, write_tiny_mnist
from lightning_gait.data import (
    MNIST_MEAN,
    CIFAR10DataModule,
    DataFormatError,
    DataNotFoundError,
    EpochSeededSampler,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
)

MODULES = [MNISTDataModule, FashionMNISTDataModule]
FOLDERS = {MNISTDataModule: "MNIST", FashionMNISTDataModule: "FashionMNIST"}
by_module = pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)


def make_dm(cls, root, **kwargs):
    dm = cls(str(root), download=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def fake_trainer(precision="64-true", world_size=1, rank=0):
    """What the DataModule reads from its trainer: precision, world size, rank."""
    return types.SimpleNamespace(precision=precision, world_size=world_size, global_rank=rank)


def batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


# ---------------------------------------------------------------------- the data contract
def test_data_contract_is_readable_from_the_classes():
    for cls, shape in [(CIFAR10DataModule, (3, 32, 32)), (MNISTDataModule, (1, 28, 28)),
                       (FashionMNISTDataModule, (1, 28, 28))]:
        assert issubclass(cls, ImageDataModule)
        assert cls.input_shape == shape and cls.num_classes == 10
        assert cls.input_size == cls.in_features == int(np.prod(shape))


def test_a_new_data_set_only_reads_its_files(tmp_path):
    """The base class docstring's recipe: class attributes and ``read_split``."""

    class TinyImages(ImageDataModule):
        name, folder, files = "Tiny images", "tiny", ("train.npz", "test.npz")
        input_shape, num_classes = (3, 4, 5), 3

        def read_split(self, train):
            with np.load(self.data_folder / ("train.npz" if train else "test.npz")) as f:
                return torch.from_numpy(f["images"]), torch.from_numpy(f["labels"]).long()

    assert TinyImages.input_size == 60
    (tmp_path / "tiny").mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 30), ("test", 9)):
        np.savez(tmp_path / "tiny" / f"{name}.npz", images=rng.integers(0, 256, (n, 3, 4, 5), dtype=np.uint8),
                 labels=np.arange(n) % 3)
    dm = make_dm(TinyImages, tmp_path, val_size=6, batch_size=8)
    assert dm.data_train.images.shape == (24, 60) and len(dm.data_val) == 6 and len(dm.data_test) == 9
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 60) and y.dtype == torch.int64

    class Unsized(ImageDataModule):
        pass

    with pytest.raises(TypeError, match="input_shape"):
        Unsized()


def test_the_contract_is_checked_on_what_a_subclass_reads(tmp_path):
    class BadLabels(ImageDataModule):
        name, input_shape, num_classes = "Bad labels", (1, 2, 2), 2

        def read_split(self, train):
            return torch.zeros(5, 4, dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1])

    with pytest.raises(DataFormatError, match=r"labels in \[0, 2\], outside \[0, 1\]"):
        make_dm(BadLabels, tmp_path, val_size=0)


# ---------------------------------------------------------------------- reading the files
@by_module
def test_images_are_those_torchvision_reads(cls, tiny_mnist_root):
    from torchvision import datasets

    dm = make_dm(cls, tiny_mnist_root, val_size=0)
    for split, train in ((dm.data_train, True), (dm.data_test, False)):
        reference = getattr(datasets, cls.torchvision_class)(str(tiny_mnist_root), train=train, download=False)
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(reference.data), 784)
        assert torch.equal(split.images, reference.data.reshape(-1, 784))
        assert split.labels.dtype == torch.int64 and torch.equal(split.labels, reference.targets)
    assert len(dm.data_train) == 96 and len(dm.data_test) == 32
    assert sorted(torch.bincount(dm.data_train.labels).tolist()) == [9] * 4 + [10] * 6


@by_module
def test_gzipped_files_read_the_same_and_are_checksummed(cls, tiny_mnist_root, tmp_path):
    write_tiny_mnist(tmp_path, FOLDERS[cls], seed=0 if cls is MNISTDataModule else 1, compress=True)
    assert not any(p.suffix != ".gz" for p in (tmp_path / FOLDERS[cls] / "raw").iterdir())
    plain = make_dm(cls, tiny_mnist_root, val_size=0)
    gz = make_dm(cls, tmp_path, val_size=0, verify_checksums=False)
    assert torch.equal(plain.data_train.images, gz.data_train.images)
    assert torch.equal(plain.data_test.labels, gz.data_test.labels)
    with pytest.raises(DataFormatError, match="md5 sum") as info:
        make_dm(cls, tmp_path, val_size=0, verify_checksums=True)
    assert "train-images-idx3-ubyte.gz" in str(info.value) and "verify_checksums false" in str(info.value)


@by_module
def test_dtype_follows_the_trainer_precision(cls, tiny_mnist_root):
    dm = make_dm(cls, tiny_mnist_root, val_size=0, batch_size=8)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 784)
    for precision, dtype in [("64-true", torch.float64), ("32-true", torch.float32),
                             ("bf16-true", torch.bfloat16), ("16-mixed", torch.float32)]:
        dm.trainer = fake_trainer(precision)
        x, y = dm.on_after_batch_transfer((images, labels), 0)
        assert x.dtype == dtype and y is labels, precision
        torch.testing.assert_close(x, (images.double() / 255).to(dtype), rtol=0, atol=0)
    dm.trainer = None
    assert dm.on_after_batch_transfer((images, labels), 0)[0].dtype == torch.float32


def test_per_channel_normalization(tiny_mnist_root):
    dm = make_dm(MNISTDataModule, tiny_mnist_root, val_size=0, normalize_channels=True)
    x = dm.preprocess(dm.data_train.images[:3], torch.float64)
    torch.testing.assert_close(x, (dm.data_train.images[:3].double() / 255 - MNIST_MEAN[0]) / 0.3081)


# ---------------------------------------------------------------------- split and order
@by_module
def test_validation_split_is_seeded_and_disjoint(cls, tiny_mnist_root):
    a = make_dm(cls, tiny_mnist_root, val_size=16, split_seed=3)
    b = make_dm(cls, tiny_mnist_root, val_size=16, split_seed=3)
    c = make_dm(cls, tiny_mnist_root, val_size=16, split_seed=4)
    assert (len(a.data_train), len(a.data_val), len(a.data_test)) == (80, 16, 32)
    assert torch.equal(a.data_val.images, b.data_val.images) and torch.equal(a.data_train.labels, b.data_train.labels)
    assert not torch.equal(a.data_val.images, c.data_val.images)
    train_rows = {bytes(r.numpy()) for r in a.data_train.images}
    assert not any(bytes(r.numpy()) in train_rows for r in a.data_val.images)
    everything = make_dm(cls, tiny_mnist_root, val_size=0)
    assert torch.equal(everything.data_val.images, everything.data_test.images) and len(everything.data_train) == 96
    with pytest.raises(ValueError, match="val_size"):
        make_dm(cls, tiny_mnist_root, val_size=96)


@by_module
def test_training_order_is_epoch_seeded(cls, tiny_mnist_root):
    one = make_dm(cls, tiny_mnist_root, val_size=16, batch_size=32, shuffle_seed=5).train_dataloader()
    two = make_dm(cls, tiny_mnist_root, val_size=16, batch_size=32, shuffle_seed=5).train_dataloader()
    assert isinstance(one.sampler, EpochSeededSampler)
    first, again, later = batches(one, 0), batches(two, 0), batches(one, 1)
    assert [len(y) for _, y in first] == [32, 32, 16]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, again))
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(first, later))
    # each epoch is one pass over the training split
    seen = sorted(bytes(r.numpy()) for x, _ in later for r in x)
    assert seen == sorted(bytes(r.numpy()) for r in one.dataset.images)


@by_module
def test_state_round_trip_gives_the_same_batches(cls, tiny_mnist_root):
    """A DataModule rebuilt from the saved hyperparameters and state serves the same epoch."""
    dm = make_dm(cls, tiny_mnist_root, val_size=16, split_seed=2, shuffle_seed=9, batch_size=16)
    saved = {"hparams": dict(dm.hparams), "state": dm.state_dict()}
    restored = cls(**saved["hparams"])
    restored.load_state_dict(saved["state"])
    restored.setup("fit")
    assert torch.equal(restored.data_val.images, dm.data_val.images)
    for p, q in zip(batches(dm.train_dataloader(), 3), batches(restored.train_dataloader(), 3)):
        assert torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])


@by_module
def test_ddp_ranks_split_the_one_process_batches(cls, tiny_mnist_root):
    """Under DDP rank r takes every other sample of the one-process batch of twice the size."""
    single = make_dm(cls, tiny_mnist_root, val_size=16, batch_size=16, shuffle_seed=7)
    ranks = [make_dm(cls, tiny_mnist_root, val_size=16, batch_size=8, shuffle_seed=7) for _ in range(2)]
    loaders = []
    for r, dm in enumerate(ranks):
        dm.trainer = fake_trainer(world_size=2, rank=r)
        loaders.append(dm.train_dataloader())
        assert isinstance(loaders[-1].sampler, DistributedSampler)
    for epoch in range(2):
        whole = batches(single.train_dataloader(), epoch)
        parts = [batches(loader, epoch) for loader in loaders]
        assert len(whole) == len(parts[0]) == len(parts[1]) == 5
        for k, (x, y) in enumerate(whole):
            for r in range(2):
                assert torch.equal(parts[r][k][0], x[r::2]) and torch.equal(parts[r][k][1], y[r::2]), (epoch, k, r)


# ---------------------------------------------------------------------- errors
@by_module
def test_missing_data_names_the_folder_files_and_ways_out(cls, tmp_path):
    dm = cls(str(tmp_path / "nothing"), download=False)
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str((tmp_path / "nothing" / FOLDERS[cls] / "raw").resolve()) in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message and ".gz" in message
    assert "--data.download true" in message and "internet" in message and "--data.data_dir" in message
    with pytest.raises(DataNotFoundError, match="files missing"):
        dm.setup("fit")


def _swap_in_labels(raw):
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-labels-idx1-ubyte").read_bytes())


def _not_gzip(raw):
    (raw / "t10k-images-idx3-ubyte").unlink()
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")


def _truncate(raw):
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])


CORRUPTIONS = {
    "wrong magic number": ("train-images-idx3-ubyte", "magic number 2049, expected 2051", _swap_in_labels),
    "truncated": ("t10k-images-idx3-ubyte", "bytes after its header", _truncate),
    "label out of range": ("train-labels-idx1-ubyte", "labels up to 12",
                           lambda raw: write_idx(raw / "train-labels-idx1-ubyte", np.arange(96) % 13)),
    "label count": ("t10k-labels-idx1-ubyte", "31 labels for the 32 images",
                    lambda raw: write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(31) % 10)),
    "image size": ("train-images-idx3-ubyte", "32 x 32 pixels, expected 28 x 28",
                   lambda raw: write_idx(raw / "train-images-idx3-ubyte", np.zeros((96, 32, 32)))),
    "not gzip": ("t10k-images-idx3-ubyte.gz", "could not be read", _not_gzip),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_file_is_named(corruption, tmp_path):
    name, problem, corrupt = CORRUPTIONS[corruption]
    raw = write_tiny_mnist(tmp_path) / "MNIST" / "raw"
    corrupt(raw)
    with pytest.raises(DataFormatError) as info:
        make_dm(MNISTDataModule, tmp_path, val_size=0, verify_checksums=False)
    message = str(info.value)
    assert str(raw.resolve() / name) in message and problem in message, message
    assert isinstance(info.value, DataNotFoundError)  # the CLI reports it as a data error


# ---------------------------------------------------------------------- training
def _backprop(seed=0, **kwargs):
    from lightning_gait import Backprop, InvertibleMLP

    torch.manual_seed(seed)
    return Backprop(InvertibleMLP(in_features=784, width=32, depth=2, num_classes=10, square_output=False),
                    lr=1e-3, **kwargs)


def _trainer(max_epochs, **kwargs):
    import pytorch_lightning as pl

    return pl.Trainer(max_epochs=max_epochs, precision="64-true", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kwargs)


def test_backprop_learns_generated_mnist(tiny_mnist_root):
    dm = MNISTDataModule(str(tiny_mnist_root), download=False, val_size=16, batch_size=16)
    model = _backprop()
    _trainer(2).fit(model, datamodule=dm)
    with torch.no_grad():
        x = dm.preprocess(dm.data_train.images, torch.float64)
        accuracy = (model.net(x).argmax(1) == dm.data_train.labels).double().mean().item()
    assert accuracy > 0.5, f"training accuracy {accuracy:.2f} (chance: 0.10)"


def test_resumed_training_continues_exactly(tiny_mnist_root, tmp_path):
    """Two epochs in one go == one epoch, checkpoint, resume for the second."""

    def dm():
        return FashionMNISTDataModule(str(tiny_mnist_root), download=False, val_size=16, batch_size=16)

    straight = _backprop()
    _trainer(2).fit(straight, datamodule=dm())
    first, trainer = _backprop(), _trainer(1)
    trainer.fit(first, datamodule=dm())
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = _backprop(seed=1)  # other initial weights: the checkpoint must overwrite them
    _trainer(2).fit(resumed, datamodule=dm(), ckpt_path=tmp_path / "epoch1.ckpt")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.net.layers[0].weight, straight.net.layers[0].weight)


# ---------------------------------------------------------------- through the CLI
@pytest.mark.parametrize("data_class", ["MNISTDataModule", "FashionMNISTDataModule"])
def test_fit_trains_the_main_regime_on_generated_mnist_with_sizes_from_the_data(
        data_class, tiny_mnist_root, tmp_path, monkeypatch, capsys):
    from lightning_gait import fit

    monkeypatch.chdir(tmp_path)
    args = ["--config", "gait_norm",
            "--data.class_path", f"lightning_gait.data.{data_class}", "--data.data_dir", str(tiny_mnist_root),
            "--data.verify_checksums", "false", "--data.val_size", "16",
            "--model.init_args.net.init_args.width", "24", "--model.init_args.net.init_args.depth", "2",
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    with pytest.raises(SystemExit):
        fit.main(args + ["--print_config"])
    printed = capsys.readouterr().out
    assert "in_features: 784" in printed and "num_classes: 10" in printed
    assert fit.main(args + ["--trainer.fast_dev_run", "true"]) == 0


def test_fit_names_both_sizes_when_a_hand_set_size_disagrees_with_mnist(tiny_mnist_root, tmp_path, monkeypatch, capsys):
    from lightning_gait import fit

    monkeypatch.chdir(tmp_path)
    code = fit.main(["--config", "gait_norm", "--data.class_path", "lightning_gait.data.MNISTDataModule",
                     "--data.data_dir", str(tiny_mnist_root), "--data.verify_checksums", "false",
                     "--model.init_args.net.init_args.in_features", "3072", "--trainer.logger", "false"])
    err = capsys.readouterr().err
    assert code == 2
    assert "in_features is 3072" in err and "MNISTDataModule" in err and "784" in err
