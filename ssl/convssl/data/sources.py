"""Image sources for shard writing: a folder, an ImageFolder tree, or an IDX dataset.

A source is an indexable list of samples: ``len(source)`` and ``source.sample(i)``
(raising ``UnreadableFile`` when item ``i`` is not an image PIL can fully decode), so
parallel writers can each take a slice. Every source lists its items in a sorted,
deterministic order.

Each file is decoded completely before it is admitted (``Image.load``), not only its
header: a truncated JPEG opens fine and fails only when its pixels are read, and a
decompression bomb (an image declaring more than PIL's ``MAX_IMAGE_PIXELS`` limit, 2x
for an error) is refused at open. Either would otherwise reach the shards and fail the
reader much later.

Source specs (``open_source``): a folder path, or ``fashion-mnist:train|test``,
``mnist:train|test``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from convssl.data.idx import IDX_DATASETS, load_idx_dataset
from convssl.errors import DataError

# Shard member extensions for PIL formats; others use the lower-cased format name.
_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif",
               "TIFF": "tiff", "PPM": "ppm"}
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_/-]")


@dataclass(frozen=True)
class Sample:
    """One image as it goes into a shard: its bytes are stored as they are."""

    key: str  # unique within a source; no "." (webdataset splits keys at the first dot)
    data: bytes  # the encoded image
    ext: str  # shard member extension: "png", "jpg", ...
    label: int | None  # class index, None for unlabeled sources
    mode: str  # PIL mode of the encoded image: "L", "RGB", ...


class UnreadableFile(Exception):
    """Source item ``file`` cannot be stored as an image: ``reason`` says why."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason

    def __reduce__(self):  # picklable across writer processes
        return type(self), (self.file, self.reason)


class FolderSource:
    """Every image under ``root`` (recursive), unlabeled, in sorted path order."""

    def __init__(self, root: str | Path):
        self.root = _existing_dir(root)
        self.paths = _image_files(self.root)
        if not self.paths:
            raise DataError(
                f"no image files under {self.root} (looked for {', '.join(_image_suffixes()[:8])}, ...); "
                "point SRC at a folder of images"
            )
        self.keys = _unique_keys(self.root, self.paths)
        self.labels: list[int | None] = [None] * len(self.paths)
        self.classes: tuple[str, ...] = ()
        self.labeled = False
        self.description = f"folder {self.root}"

    def __len__(self) -> int:
        return len(self.paths)

    def sample(self, index: int) -> Sample:
        """Sample ``index``; raises ``UnreadableFile`` unless its file decodes completely."""
        path = self.paths[index]
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                image_format, mode = img.format, img.mode
                if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(
                        f"{img.width}x{img.height} pixels, more than PIL's limit of {Image.MAX_IMAGE_PIXELS}")
                img.load()
        except Exception as err:  # noqa: BLE001 - PIL's plugins raise many types on bad files
            raise UnreadableFile(path.relative_to(self.root).as_posix(), f"{type(err).__name__}: {err}") from None
        ext = _FORMAT_EXT.get(image_format or "", (image_format or path.suffix[1:]).lower())
        return Sample(self.keys[index], data, ext, self.labels[index], mode)


class ImageFolderSource(FolderSource):
    """An ImageFolder tree: class = first-level subfolder (sorted names), labeled."""

    def __init__(self, root: str | Path):
        self.root = _existing_dir(root)
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DataError(
                f"{self.root} has no class subfolders; a labeled source must be an ImageFolder "
                "tree (ROOT/<class name>/<images>), or drop --labeled to read it unlabeled"
            )
        self.paths, self.labels = [], []
        for label, class_dir in enumerate(class_dirs):
            files = _image_files(class_dir)
            self.paths += files
            self.labels += [label] * len(files)
        if not self.paths:
            raise DataError(f"the class folders under {self.root} hold no image files")
        self.keys = _unique_keys(self.root, self.paths)
        self.classes = tuple(d.name for d in class_dirs)
        self.labeled = True
        self.description = f"imagefolder {self.root}"


class IdxSource:
    """Fashion-MNIST / MNIST from IDX files, labeled, each image encoded as PNG."""

    def __init__(self, name: str, split: str):
        self.images_nhw, self.labels_n = load_idx_dataset(name, split)
        self.name, self.split = name, split
        self.classes = IDX_DATASETS[name].classes
        self.labeled = True
        self.description = f"{name}:{split}"

    def __len__(self) -> int:
        return len(self.images_nhw)

    def sample(self, index: int) -> Sample:
        """Sample ``index``: the original pixels as a grayscale PNG."""
        buffer = io.BytesIO()
        Image.fromarray(self.images_nhw[index], mode="L").save(buffer, format="PNG")
        key = f"{self.name}-{self.split}-{index:06d}"
        return Sample(key, buffer.getvalue(), "png", int(self.labels_n[index]), "L")


Source = FolderSource | ImageFolderSource | IdxSource


def open_source(spec: str, *, labeled: bool = False) -> Source:
    """Open a source spec: ``fashion-mnist:train|test``, ``mnist:train|test`` or a folder.

    A folder is read as an ImageFolder tree when ``labeled``, else as a flat (recursive)
    set of unlabeled images. IDX datasets are always labeled.
    """
    name, sep, split = spec.partition(":")
    if sep and name in IDX_DATASETS:
        return IdxSource(name, split)
    return ImageFolderSource(spec) if labeled else FolderSource(spec)


def _existing_dir(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"source {root} does not exist; give an image folder or fashion-mnist:train|test, mnist:train|test")
    if not root.is_dir():
        raise DataError(f"source {root} is not a folder; give a folder of images")
    return root


def _image_suffixes() -> list[str]:
    return sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _image_files(root: Path) -> list[Path]:
    suffixes = set(_image_suffixes())
    return sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
         and not any(part.startswith(".") for part in p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def _unique_keys(root: Path, paths: list[Path]) -> list[str]:
    """Relative paths without suffix, made safe as webdataset keys and unique."""
    keys, seen = [], set()
    for path in paths:
        key = _UNSAFE_KEY_CHARS.sub("_", path.relative_to(root).with_suffix("").as_posix())
        unique, n = key, 1
        while unique in seen:
            unique, n = f"{key}_{n}", n + 1
        seen.add(unique)
        keys.append(unique)
    return keys
