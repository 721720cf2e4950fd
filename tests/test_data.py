"""Data: IDX parsing, seeded calibration subsets, in-memory batching, ImageFolder for ImageNet."""
import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from qbench.data import TensorBatches, build_data, calibration_indices, read_idx


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_roundtrip(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "x-idx3-ubyte.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), array)


def fake_fashion_root(tmp_path, n_train=50, n_test=20):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))
    return tmp_path


def test_fashion_mnist_from_a_configured_root(tmp_path, make_config):
    cfg = make_config(f"dataset.root={fake_fashion_root(tmp_path)}", "dataset.train_limit=40",
                      "dataset.val_limit=null", "calib.num_images=12", "recipe.batch_size=8")
    data = build_data(cfg["dataset"], 8, 16, 12, 0, 0)
    assert len(data.train) == 40 // 8
    x, y = next(data.train.batches(0))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (8,)
    assert sum(len(b) for _, b in data.val.batches(0)) == 20
    assert sum(len(b) for b in data.calibration) == 12


def test_calibration_subset_is_seeded_and_exact():
    a = calibration_indices(1000, 100, seed=3)
    assert len(a) == 100 and len(set(a.tolist())) == 100
    assert torch.equal(a, calibration_indices(1000, 100, seed=3))
    assert not torch.equal(a, calibration_indices(1000, 100, seed=4))
    with pytest.raises(ValueError, match="calib.num_images must be in 1..1000"):
        calibration_indices(1000, 1001, seed=0)


def test_epoch_order_depends_on_seed_and_epoch_only():
    images = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(64)
    batches = TensorBatches(images, labels, 16, [0.5], [0.5], shuffle=True, seed=1, hflip=True)
    first = [y for _, y in batches.batches(2)]
    again = [y for _, y in batches.batches(2)]
    other = [y for _, y in batches.batches(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    x, _ = next(TensorBatches(images, labels, 64, [0.5], [0.25], shuffle=False, seed=0).batches(0))
    torch.testing.assert_close(x, (images.float() / 255 - 0.5) / 0.25)


def test_imagenet_imagefolder(tmp_path, make_config):
    root = tmp_path / "imagenet"
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("n01", "n02"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((40, 50, 3), 40 * i, np.uint8)).save(root / split / cls / f"{i}.png")
    cfg = make_config("dataset=imagenet", f"dataset.root={root}", "dataset.workers=0",
                      "dataset.image_size=32", "dataset.resize=36", "dataset.train_limit=null",
                      "dataset.val_limit=null")
    data = build_data(cfg["dataset"], 4, 4, 3, 0, 0)
    x, y = next(data.train.batches(0))
    assert x.shape == (4, 3, 32, 32)
    assert sum(len(b) for _, b in data.val.batches(0)) == 4
    assert sum(len(b) for b in data.calibration) == 3
    bad = make_config("dataset=imagenet", f"dataset.root={tmp_path}")
    with pytest.raises(ValueError, match="must hold ImageFolder 'train/' and 'val/'"):
        build_data(bad["dataset"], 4, 4, 3, 0, 0)
