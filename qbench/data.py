"""Train / validation / calibration batches for Fashion-MNIST, CIFAR-10 and ImageNet.

Fashion-MNIST and CIFAR-10 are held in memory as uint8 tensors and batched by indexing (no
worker processes: on a 2-core machine per-image transforms would cost more than the model).
ImageNet is a standard ImageFolder root (``train/`` and ``val/``) read through a DataLoader with
the usual transforms: random-resized crop + flip for training, resize + center crop for
validation. Every epoch's order comes from (seed, epoch), so a resumed run sees the same batches.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

Batch = tuple[torch.Tensor, torch.Tensor]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class BatchSource(Protocol):
    def batches(self, epoch: int) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...


@dataclass
class Data:
    train: BatchSource
    val: BatchSource
    calibration: list[torch.Tensor]
    num_classes: int
    in_chans: int


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    _, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if dtype_code != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz", root / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(root: str | None) -> tuple[torch.Tensor, ...]:
    """(train images N×1×28×28 uint8, train labels, test images, test labels).

    Looks in ``root`` if given, else Debian's ``/usr/share/datasets/fashion-mnist``; falls back
    to torchvision's download into ``root`` (or ``~/.cache/qbench``) when no IDX files are found.
    """
    search = Path(root) if root else DEBIAN_FASHION_MNIST
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [_find_idx(search, s) for s in stems]
    if any(p is None for p in paths):
        import torchvision

        download_root = Path(root) if root else Path.home() / ".cache" / "qbench"
        torchvision.datasets.FashionMNIST(str(download_root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(download_root), train=False, download=True)
        paths = [_find_idx(download_root, s) for s in stems]
    arrays = [torch.from_numpy(read_idx(p).copy()) for p in paths]  # type: ignore[arg-type]
    return arrays[0].unsqueeze(1), arrays[1].long(), arrays[2].unsqueeze(1), arrays[3].long()


def load_cifar10(root: str | None) -> tuple[torch.Tensor, ...]:
    import torchvision

    root = root or str(Path.home() / ".cache" / "qbench")
    out = []
    for train in (True, False):
        ds = torchvision.datasets.CIFAR10(root, train=train, download=True)
        out += [torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)]
    return tuple(out)


class TensorBatches:
    """Normalised float batches from uint8 images held in memory, with optional augmentation
    (random horizontal flip, random crop after zero padding)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 mean: list[float], std: list[float], shuffle: bool, seed: int,
                 hflip: bool = False, pad_crop: int = 0, drop_last: bool = False) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.hflip, self.pad_crop, self.drop_last = hflip, pad_crop, drop_last
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.hflip:
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if self.pad_crop:
            p = self.pad_crop
            h, w = x.shape[2:]
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=gen).tolist()
            x = padded[:, :, dy:dy + h, dx:dx + w]
        return x

    def batches(self, epoch: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.normalize(self.images[idx])
            if self.shuffle:
                x = self._augment(x, gen)
            yield x, self.labels[idx]


@dataclass(frozen=True)
class LoaderSettings:
    """How a DataLoader reads (never what): worker processes, pinned host memory for faster copies
    to the GPU, and whether the workers persist across epochs. Persistent workers save their start-up
    each epoch, but their random crops then run on from epoch to epoch, so a run resumed after an
    interruption sees other crops than an uninterrupted one; without them every epoch's crops follow
    from (seed, epoch)."""

    workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False


class LoaderBatches:
    """Batches from a map-style dataset through a DataLoader, reshuffled per (seed, epoch)."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int,
                 loader: LoaderSettings, drop_last: bool = False) -> None:
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.settings, self.drop_last = seed, loader, drop_last
        self.generator = torch.Generator()
        self.persistent = loader.persistent_workers and loader.workers > 0
        self.loader = self._loader() if self.persistent else None

    def __len__(self) -> int:
        n = len(self.dataset)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _loader(self) -> DataLoader:
        s = self.settings
        return DataLoader(self.dataset, self.batch_size, shuffle=self.shuffle, generator=self.generator,
                          num_workers=s.workers, drop_last=self.drop_last, pin_memory=s.pin_memory,
                          persistent_workers=self.persistent)

    def batches(self, epoch: int) -> Iterator[Batch]:
        self.generator.manual_seed(self.seed * 100_003 + epoch)
        yield from self.loader if self.loader is not None else self._loader()


def calibration_indices(num_train: int, num_images: int, seed: int) -> torch.Tensor:
    """The calibration subset: the first ``num_images`` of a permutation seeded by ``seed``."""
    if not 0 < num_images <= num_train:
        raise ValueError(f"calib.num_images must be in 1..{num_train}, got {num_images}")
    return torch.randperm(num_train, generator=torch.Generator().manual_seed(seed))[:num_images]


def _limit(n: int, limit: int | None) -> int:
    return n if limit is None else min(n, limit)


def _build_in_memory(load: Callable[[str | None], tuple[torch.Tensor, ...]], ds: dict, batch_size: int,
                     eval_batch_size: int, calib_images: int, calib_seed: int, seed: int) -> Data:
    """A small dataset held in memory as uint8 tensors (``load`` reads it from ``ds['root']``)."""
    xtr, ytr, xva, yva = load(ds.get("root"))
    ntr, nva = _limit(len(ytr), ds.get("train_limit")), _limit(len(yva), ds.get("val_limit"))
    xtr, ytr, xva, yva = xtr[:ntr], ytr[:ntr], xva[:nva], yva[:nva]
    aug = ds.get("augment") or {}
    train = TensorBatches(xtr, ytr, batch_size, ds["mean"], ds["std"], True, seed,
                          aug.get("hflip", False), aug.get("pad_crop", 0), drop_last=True)
    val = TensorBatches(xva, yva, eval_batch_size, ds["mean"], ds["std"], False, seed)
    calib_idx = calibration_indices(ntr, calib_images, calib_seed)
    calib_x = train.normalize(xtr[calib_idx])
    calibration = list(calib_x.split(batch_size))
    return Data(train, val, calibration, ds["num_classes"], ds["in_chans"])


def _build_imagefolder(ds: dict, batch_size: int, eval_batch_size: int, calib_images: int,
                       calib_seed: int, seed: int) -> Data:
    from torchvision import datasets
    from torchvision import transforms as T

    root = Path(ds["root"]) if ds.get("root") else None
    if root is None or not (root / "train").is_dir() or not (root / "val").is_dir():
        raise ValueError(f"dataset.root: {root} must hold ImageFolder 'train/' and 'val/' folders")
    norm = T.Normalize(ds["mean"], ds["std"])
    size, resize = ds["image_size"], ds["resize"]
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), norm])
    train_set = datasets.ImageFolder(str(root / "train"), train_tf)
    val_set = datasets.ImageFolder(str(root / "val"), eval_tf)
    ntr, nva = _limit(len(train_set), ds.get("train_limit")), _limit(len(val_set), ds.get("val_limit"))
    train_set = Subset(train_set, range(ntr))
    val_set = Subset(val_set, range(nva))
    loader = LoaderSettings(ds.get("workers", 8), ds.get("pin_memory", False), ds.get("persistent_workers", False))
    train = LoaderBatches(train_set, batch_size, True, seed, loader, drop_last=True)
    val = LoaderBatches(val_set, eval_batch_size, False, seed, loader)
    calib_set = Subset(datasets.ImageFolder(str(root / "train"), eval_tf),
                       calibration_indices(ntr, calib_images, calib_seed).tolist())
    calibration = [x for x, _ in DataLoader(calib_set, batch_size, num_workers=loader.workers)]
    return Data(train, val, calibration, ds["num_classes"], ds["in_chans"])


DataBuilder = Callable[[dict, int, int, int, int, int], Data]
DATASETS: dict[str, DataBuilder] = {
    "fashion_mnist": partial(_build_in_memory, load_fashion_mnist),
    "cifar10": partial(_build_in_memory, load_cifar10),
    "imagenet": _build_imagefolder,
}


def build_data(ds: dict, batch_size: int, eval_batch_size: int, calib_images: int,
               calib_seed: int, seed: int) -> Data:
    """Train, validation and calibration data for the dataset config ``ds``
    (``conf/dataset/<name>.yaml``, ``name`` a key of :data:`DATASETS`). ``train_limit`` /
    ``val_limit`` keep the first N images."""
    if ds["name"] not in DATASETS:
        raise ValueError(f"unknown dataset {ds['name']!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[ds["name"]](ds, batch_size, eval_batch_size, calib_images, calib_seed, seed)


def run_data(cfg: dict) -> Data:
    """The data of the run with config ``cfg``: its dataset at its recipe's batch sizes, its
    calibration images and seeds."""
    recipe = cfg["recipe"]
    return build_data(cfg["dataset"], recipe["batch_size"], recipe["eval_batch_size"], cfg["calib"]["num_images"],
                      cfg["calib"]["seed"], cfg["seed"])
