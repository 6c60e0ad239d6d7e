"""CIFAR-10 and CIFAR-100 in the official "python version" layout, with an optional download.

Layout (as extracted from the official archives, any number of images per batch file)::

    <root>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    <root>/cifar-100-python/train, test, meta

Each batch file is a pickled dict with ``data`` (``N x 3072`` uint8, each row one image in
CHW order) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). Files are read with a
restricted unpickler that only builds numpy arrays and plain Python values, never arbitrary
objects. ``root`` may be the folder holding ``cifar-10-batches-py`` or that folder itself.

The download URL is, in order of precedence: the ``url`` argument, the environment variable
``BNNKIT_CIFAR_URL`` (a full archive URL, or a base ending in ``/`` to which the archive name
is appended), :data:`CIFAR_URLS`. The archive is MD5-checked and extracted safely
(see :mod:`bnnkit.data.files`).
"""

from __future__ import annotations

import codecs
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from bnnkit.data.augment import normalization_stats
from bnnkit.data.base import DataBundle
from bnnkit.data.config import DataConfig
from bnnkit.data.files import (
    DataCorruptError,
    DataNotFoundError,
    DownloadError,
    fetch_archive,
    resolve_root,
)
from bnnkit.data.memory import build_loaders

URL_ENV = "BNNKIT_CIFAR_URL"
"""Environment variable overriding the download URL (full URL, or a base ending in ``/``)."""


@dataclass(frozen=True)
class CifarSpec:
    """What distinguishes CIFAR-10 from CIFAR-100 on disk."""

    title: str
    folder: str
    archive: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int


CIFAR: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10,
    ),
    "cifar100": CifarSpec(
        "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85", ("train",), ("test",), "fine_labels", 100,
    ),
}  # fmt: skip

CIFAR_URLS: dict[str, str] = {
    name: f"https://www.cs.toronto.edu/~kriz/{spec.archive}" for name, spec in CIFAR.items()
}
"""Official archive URLs (override with ``url=`` or ``$BNNKIT_CIFAR_URL``)."""


def _spec(name: str) -> CifarSpec:
    if name not in CIFAR:
        raise ValueError(f"unknown CIFAR data set {name!r}; valid: {', '.join(CIFAR)}")
    return CIFAR[name]


def cifar_url(name: str, url: str | None = None) -> str:
    """The archive URL of ``name``: ``url``, else ``$BNNKIT_CIFAR_URL``, else the official one."""
    url = url or os.environ.get(URL_ENV) or CIFAR_URLS[name]
    return url + _spec(name).archive if url.endswith("/") else url


def cifar_folder(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds (or will hold) the batch files of ``name``.

    ``root`` is the parent of ``cifar-10-batches-py`` / ``cifar-100-python`` (default:
    :func:`~bnnkit.data.files.default_root`); a ``root`` that already is that folder is
    accepted too.
    """
    spec, base = _spec(name), resolve_root(root, name)
    return base if base.name == spec.folder else base / spec.folder


def missing_files(name: str, root: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the batch files of ``name`` that are absent (empty list: all there)."""
    spec, folder = _spec(name), cifar_folder(name, root)
    return [f for f in (*spec.train_files, *spec.test_files) if not (folder / f).is_file()]


def download_cifar(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch the official archive of ``name``, check its MD5 and extract it (atomically).

    Returns:
        The folder holding the batch files.

    Raises:
        DownloadError: the URL cannot be reached or the MD5 does not match.
        DataCorruptError: the archive is unreadable, unsafe or lacks the expected folder.
    """
    spec, folder = _spec(name), cifar_folder(name, root)
    source = cifar_url(name, url)
    try:
        fetch_archive(source, folder.parent, spec.folder, spec.md5, timeout=timeout)
    except DownloadError as exc:
        raise DownloadError(
            f"{exc}. Check the network connection, or fetch {CIFAR_URLS[name]} by hand and "
            f"extract it into {folder.parent}, or set ${URL_ENV} to a mirror of {spec.archive}"
        ) from exc
    return folder


class _SafeUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain values only (what CIFAR batch files contain)."""

    _reconstruct = np.ndarray((0,), np.uint8).__reduce__()[0]
    _scalar = np.int64(0).__reduce__()[0]
    ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refers to {module}.{name}, which no CIFAR batch file does"
            ) from None


def _key(key: object) -> object:
    return key.decode("latin1") if isinstance(key, bytes) else key


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: ``(data (N, 3072) uint8, labels (N,) int64)``.

    Raises:
        DataCorruptError: unreadable pickle, missing keys, wrong shapes or dtype, label count
            different from the image count, or labels outside ``[0, num_classes)``.
    """

    def bad(problem: str) -> DataCorruptError:
        return DataCorruptError(
            f"CIFAR file {path} is corrupt: {problem}. Delete it and download the data again"
        )

    try:
        with open(path, "rb") as f:
            raw = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # pickle raises many types on garbage input
        raise bad(f"cannot unpickle it ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise bad(f"expected a pickled dict, found {type(raw).__name__}")
    batch = {_key(k): v for k, v in raw.items()}
    if "data" not in batch or label_key not in batch:
        raise bad(f"expected keys 'data' and {label_key!r}, found {sorted(map(str, batch))}")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise bad(f"'data' must be a uint8 array, found {getattr(data, 'dtype', type(data))}")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise bad(f"'data' must have shape (N, 3072), found {data.shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise bad(f"{label_key!r} is not a list of integers ({exc})") from exc
    if labels.shape != (data.shape[0],):
        raise bad(f"{data.shape[0]} images but {labels.size} labels in {label_key!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise bad(f"labels outside [0, {num_classes}) (min {labels.min()}, max {labels.max()})")
    return data, labels


def load_cifar(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    split: str = "train",
    download: bool = False,
    url: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One split of CIFAR-10/100 as ``(images (N, 3, 32, 32) uint8, labels (N,) int64)``.

    Args:
        name: ``cifar10`` or ``cifar100``.
        root: folder that holds the data set folder (default ``~/.cache/bnnkit/<name>``).
        split: ``train`` or ``test``.
        download: fetch the archive when a batch file is missing.
        url: archive URL for the download (see :func:`cifar_url`).

    Raises:
        DataNotFoundError: files missing and ``download`` false (lists them and the folder).
        DataCorruptError: a file is unreadable or malformed (names the file).
    """
    spec, folder = _spec(name), cifar_folder(name, root)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    missing = missing_files(name, root)
    if missing and download:
        download_cifar(name, root, url=url)
        missing = missing_files(name, root)
    if missing:
        raise DataNotFoundError(
            f"{spec.title} not found: missing {', '.join(missing)} in {folder}. Put the official "
            f"python version there (extract {spec.archive} into {folder.parent}), set "
            "data.root to the folder that holds it, or set data.download: true to fetch it"
        )
    files = spec.train_files if split == "train" else spec.test_files
    parts = [read_batch(folder / f, spec.label_key, spec.num_classes) for f in files]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(data), torch.from_numpy(labels)


def build_cifar(
    cfg: DataConfig,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
) -> DataBundle:
    """CIFAR-10/100 loaders: training split augmented on ``device``, test split as validation.

    The split is held as one uint8 tensor (on ``device`` when ``cfg.in_memory``, else on the
    CPU and moved per batch, with identical batches); see :class:`~bnnkit.data.TensorLoader`.
    With ``cfg.download`` every process that finds files missing downloads them; all writes
    are atomic, so concurrent downloads are safe but wasteful: under ``torchrun`` build the
    data on rank 0 first, then on the other ranks after a barrier.
    """
    x_train, y_train = load_cifar(cfg.name, cfg.root, split="train", download=cfg.download)
    x_val, y_val = load_cifar(cfg.name, cfg.root, split="test", download=cfg.download)
    stats = normalization_stats(cfg.normalize, cfg.name)
    train, val = build_loaders(
        x_train, y_train, x_val, y_val, cfg,
        device=device, rank=rank, world_size=world_size, seed=seed, stats=stats,
    )  # fmt: skip
    return DataBundle(cfg.name, train, val, CIFAR[cfg.name].num_classes, (3, 32, 32))
