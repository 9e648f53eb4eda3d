"""Tests of convssl.data: real images written to real shards in tmp_path, read back."""

from __future__ import annotations

import argparse
import io
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convssl.commands import shards as shards_command
from convssl.views.crops import RandomResizedCrop, ResizeCenterCrop
from convssl.data.idx import FASHION_MNIST_CLASSES, find_idx_files, read_idx
from convssl.data.manifest import read_manifest
from convssl.views.normalize import normalize
from convssl.data.loader import make_loader
from convssl.data.shard_dataset import ShardDataset
from convssl.views.crop_views import CropViews, Named
from convssl.data.sources import open_source
from convssl.data.urls import resolve_shards
from convssl.data.writer import write_shards
from convssl.errors import DataError

REPO = Path(__file__).resolve().parents[1]
FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz")


# -- fixtures: real image files ------------------------------------------------------

def _random_image(rng: np.random.Generator, mode: str = "RGB") -> Image.Image:
    """Smooth-ish random content (so JPEG is a realistic test), random size."""
    height, width = rng.integers(12, 40, size=2)
    base = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    noise = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
    pixels = np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))[:height, :width] // 2 + noise
    return Image.fromarray(pixels, "RGB").convert(mode)


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """12 images, PNG and JPEG, nested one level, plus a non-image file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for i in range(12):
        folder = root / ("a" if i % 3 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        ext = "jpg" if i % 2 else "png"
        _random_image(rng).save(folder / f"img.{i:02d}.{ext}")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def image_folder_tree(tmp_path: Path) -> Path:
    """ImageFolder tree: 3 classes (given out of order), 4 PNGs each."""
    rng = np.random.default_rng(1)
    root = tmp_path / "tree"
    for name in ("zebra", "ant", "mole"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            _random_image(rng, "L" if name == "mole" else "RGB").save(root / name / f"{i}.png")
    return root


def _read_all(urls, **kwargs) -> list[dict]:
    return list(ShardDataset(urls, **kwargs))


def _make_shards(tmp_path: Path, count: int, maxcount: int, name: str = "shards") -> Path:
    """``count`` labeled 8x8 grayscale PNG samples, ``maxcount`` per shard."""
    rng = np.random.default_rng(count)
    tree = tmp_path / f"{name}-src"
    for i in range(count):
        (tree / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(tree / f"c{i % 3}" / f"{i:04d}.png")
    write_shards(open_source(str(tree), labeled=True), tmp_path / name, maxcount=maxcount)
    return tmp_path / name


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), seed % 256, dtype=np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


# -- writing and reading back --------------------------------------------------------

def test_folder_round_trip_keeps_pixels(photo_folder: Path, tmp_path: Path):
    source = open_source(str(photo_folder))
    assert len(source) == 12  # notes.txt is not listed
    manifest = write_shards(source, tmp_path / "out", maxcount=5)
    assert [s.count for s in manifest.shards] == [5, 5, 2] and not manifest.labeled
    files = {key: path for key, path in zip(source.keys, source.paths)}
    samples = _read_all(str(tmp_path / "out"))
    assert len(samples) == 12 and {s["key"] for s in samples} == set(files)
    for sample in samples:
        expected_HWC = np.array(Image.open(files[sample["key"]]).convert("RGB"))
        # PNG exactly; JPEG (original bytes kept) exactly PIL's decode of the file.
        assert np.array_equal(sample["img"].permute(1, 2, 0).numpy(), expected_HWC)


def test_image_folder_labels_and_channels(image_folder_tree: Path, tmp_path: Path):
    manifest = write_shards(open_source(str(image_folder_tree), labeled=True), tmp_path / "out")
    assert manifest.classes == ("ant", "mole", "zebra") and manifest.labeled
    assert manifest.modes == ("L", "RGB") and manifest.channels is None
    samples = _read_all(str(tmp_path / "out"), labeled=True, channels=3)
    assert Counter(s["cls"] for s in samples) == {0: 4, 1: 4, 2: 4}
    for sample in samples:
        class_name, stem = sample["key"].split("/")
        assert manifest.classes[sample["cls"]] == class_name
        expected = np.array(Image.open(image_folder_tree / class_name / f"{stem}.png").convert("RGB"))
        assert np.array_equal(sample["img"].permute(1, 2, 0).numpy(), expected)
    gray = _read_all(str(tmp_path / "out"), channels=1)
    assert all(s["img"].shape[0] == 1 for s in gray)
    with pytest.raises(DataError, match="cannot batch 'img'"):  # sizes differ: a crop is needed
        next(iter(make_loader(ShardDataset(str(tmp_path / "out")), batch_size=12, num_workers=0)))


def test_parallel_writers_write_the_same_samples(photo_folder: Path, tmp_path: Path):
    source = open_source(str(photo_folder))
    one = write_shards(source, tmp_path / "one", maxcount=4, workers=1)
    three = write_shards(source, tmp_path / "three", maxcount=4, workers=3)
    assert one.count == three.count == 12
    assert [s.name for s in three.shards] == [f"shard-{i:06d}.tar" for i in range(len(three.shards))]
    read = [[(s["key"], s["img"].numpy().tobytes()) for s in _read_all(str(tmp_path / d))] for d in ("one", "three")]
    assert read[0] == read[1]
    assert [s.count for s in three.shards] == [s.count for s in one.shards] == [4, 4, 4]


def test_resize_and_reencode(photo_folder: Path, tmp_path: Path):
    manifest = write_shards(open_source(str(photo_folder)), tmp_path / "out", resize=10, reencode="png")
    assert manifest.count == 12
    for sample in _read_all(str(tmp_path / "out")):
        assert min(sample["img"].shape[1:]) == 10


def test_slice_and_drop_labels(image_folder_tree: Path, tmp_path: Path):
    manifest = write_shards(open_source(str(image_folder_tree), labeled=True), tmp_path / "out",
                            start=2, stop=7, labeled=False)
    assert manifest.count == 5 and not manifest.labeled and manifest.classes == ()
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        assert not [n for n in tar.getnames() if n.endswith(".cls")]


def test_unreadable_files_are_skipped_and_counted(photo_folder: Path, tmp_path: Path):
    (photo_folder / "broken.png").write_bytes(b"definitely not a png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        manifest = write_shards(open_source(str(photo_folder)), tmp_path / "out")
    assert manifest.count == 12 and manifest.skipped == 1


def test_source_and_output_errors(tmp_path: Path, photo_folder: Path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no class subfolders"):
        open_source(str(photo_folder / "a"), labeled=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="--overwrite"):
        write_shards(open_source(str(photo_folder)), foreign)
    write_shards(open_source(str(photo_folder)), foreign, overwrite=True)
    assert (foreign / "thesis.tex").exists()
    # An earlier convssl output is replaced without --overwrite, stale shards removed.
    write_shards(open_source(str(photo_folder)), tmp_path / "again", maxcount=2)
    manifest = write_shards(open_source(str(photo_folder)), tmp_path / "again", maxcount=100)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["manifest.json", "shard-000000.tar"]
    assert manifest.count == 12


# -- corrupt data --------------------------------------------------------------------

def test_corrupt_sample_is_counted_and_keeps_its_position(tmp_path: Path):
    members = [(f"s{i:03d}.png", _png_bytes(i)) for i in range(60)]
    members.insert(30, ("bad.png", b"garbage bytes, no image here"))
    members.insert(0, ("bad0.png", b"more garbage at the very start"))
    _write_tar(tmp_path / "shard.tar", members)
    dataset = ShardDataset([str(tmp_path / "shard.tar")], max_corrupt_fraction=0.05)
    with pytest.warns(UserWarning, match=r"corrupt sample 'bad' in shard .*shard\.tar"):
        samples = list(dataset)
    keys = [s["key"] for s in samples]
    # One sample per position: the first corrupt one takes the next good image, a later
    # one the previous good image, so 62 positions yield 62 samples, none of them corrupt.
    assert keys == ["s000"] + [f"s{i:03d}" for i in range(30)] + ["s029"] + [f"s{i:03d}" for i in range(30, 60)]
    assert all(np.array_equal(s["img"].numpy(), np.full((1, 4, 4), int(s["key"][1:]))) for s in samples)
    assert (dataset.stats.seen, dataset.stats.corrupt) == (62, 2)


def test_too_many_corrupt_samples_raise(tmp_path: Path):
    members = [(f"s{i:03d}.png", _png_bytes(i) if i % 10 else b"junk") for i in range(100)]
    members += [("nocls.png", _png_bytes(0))]
    _write_tar(tmp_path / "shard.tar", members)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="corrupt"):
            list(ShardDataset([str(tmp_path / "shard.tar")], max_corrupt_fraction=0.01))


def test_truncated_shard_raises_naming_it(tmp_path: Path):
    shards = _make_shards(tmp_path, 30, maxcount=30)
    shard = shards / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2 + 100])
    with pytest.raises(DataError, match="shard-000000.tar"):
        list(ShardDataset(str(shards)))


# -- splitting, shuffling, resuming ------------------------------------------------------

@pytest.mark.parametrize("count, maxcount", [(48, 6), (30, 15)])  # 8 shards >= 4 units; 2 shards < 4 units
def test_two_ranks_two_workers_see_every_sample_once(tmp_path: Path, count: int, maxcount: int):
    shards = _make_shards(tmp_path, count, maxcount)
    for epoch in (0, 1):
        keys = []
        for rank in (0, 1):
            dataset = ShardDataset(str(shards), labeled=True, shuffle_buffer=8, seed=3, epoch=epoch,
                                   rank=rank, world_size=2)
            for batch in make_loader(dataset, batch_size=4, num_workers=2, persistent_workers=False):
                keys += batch["key"]
        assert len(keys) == count and len(set(keys)) == count


def test_order_depends_on_seed_and_epoch_only(tmp_path: Path):
    shards = _make_shards(tmp_path, 40, maxcount=10)

    def order(epoch: int, seed: int = 0) -> list[str]:
        return [s["key"] for s in ShardDataset(str(shards), shuffle_buffer=16, seed=seed, epoch=epoch)]

    assert order(0) == order(0)
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1))
    assert order(0) != order(0, seed=1)
    # set_epoch reaches persistent workers.
    dataset = ShardDataset(str(shards), shuffle_buffer=16)
    loader = make_loader(dataset, batch_size=5, num_workers=2)
    first = [k for b in loader for k in b["key"]]
    dataset.set_epoch(1)
    second = [k for b in loader for k in b["key"]]
    assert first != second and sorted(first) == sorted(second)


@pytest.mark.parametrize("start_batches", [6, 7])
def test_resume_continues_the_uninterrupted_stream(tmp_path: Path, start_batches: int):
    shards = _make_shards(tmp_path, 24, maxcount=6)  # 4 shards, 2 workers: 12 samples a worker and epoch
    crop = Named(RandomResizedCrop(6, scale=(0.3, 1.0)))

    def batches(start: int, count: int) -> list[tuple]:
        dataset = ShardDataset(str(shards), transform=crop, shuffle_buffer=5, seed=7, infinite=True,
                               start_batches=start, batch_size=4)
        out = []
        for batch in make_loader(dataset, batch_size=4, num_workers=2, persistent_workers=False):
            out.append((tuple(batch["key"]), batch["img"].numpy().tobytes()))
            if len(out) == count:
                return out

    uninterrupted = batches(0, start_batches + 8)  # crosses epoch boundaries (3 batches a worker per epoch)
    assert batches(start_batches, 8) == uninterrupted[start_batches:]


# -- shard specs, IDX, embedded data -------------------------------------------------------

def test_resolve_shards_forms(tmp_path: Path):
    shards = _make_shards(tmp_path, 12, maxcount=4)
    expected = [str(shards / f"shard-{i:06d}.tar") for i in range(3)]
    urls, manifest = resolve_shards(str(shards))
    assert urls == expected and manifest.count == 12
    assert resolve_shards(str(shards / "manifest.json"))[0] == expected
    urls, manifest = resolve_shards(str(shards / "shard-{000000..000002}.tar"))
    assert urls == expected and manifest is None
    (shards / "manifest.json").unlink()
    assert resolve_shards(str(shards)) == (expected, None)
    with pytest.raises(DataError, match="shard-000009"):
        resolve_shards(str(shards / "shard-{000009..000010}.tar"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no manifest.json and no"):
        resolve_shards(str(tmp_path / "nothing"))


@pytest.mark.skipif(not FMNIST_DEBIAN.exists(), reason="Fashion-MNIST IDX files not installed")
def test_idx_reader_on_fashion_mnist():
    images_path, labels_path = find_idx_files("fashion-mnist", "train", download=False)
    images_nhw, labels_n = read_idx(images_path), read_idx(labels_path)
    assert images_nhw.shape == (60000, 28, 28) and images_nhw.dtype == np.uint8
    assert labels_n.shape == (60000,) and labels_n[0] == 9
    assert FASHION_MNIST_CLASSES[labels_n[0]] == "Ankle boot"


def test_idx_reader_rejects_truncated_file(tmp_path: Path):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array([2, 2, 2], ">i4").tobytes() + bytes(5))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("folder, count, labeled", [("unlabeled", 5000, False), ("train", 1000, True),
                                                     ("test", 1000, True)])
def test_embedded_fmnist_manifests(folder: str, count: int, labeled: bool):
    manifest = read_manifest(REPO / "data" / "fmnist" / folder)
    assert manifest.count == count and manifest.labeled is labeled
    assert all(s.count <= 1000 for s in manifest.shards) and manifest.channels == 1
    if labeled:
        assert manifest.classes == FASHION_MNIST_CLASSES
    first = next(iter(ShardDataset(str(REPO / "data" / "fmnist" / folder), labeled=labeled)))
    assert first["img"].shape == (1, 28, 28)


# -- transforms and CLI ----------------------------------------------------------------

def test_crops_are_deterministic_per_generator():
    img_CHW = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    two = CropViews(RandomResizedCrop(16), views=2)
    first, again = (two(img_CHW, torch.Generator().manual_seed(s))["img"] for s in (0, 0))
    assert isinstance(first, list) and len(first) == 2 and first[0].shape == (3, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.equal(first[0], first[1])
    one = RandomResizedCrop(16)(img_CHW, torch.Generator().manual_seed(0))
    assert isinstance(one, torch.Tensor) and one.dtype == torch.uint8
    center = ResizeCenterCrop(16)(img_CHW)
    assert center.shape == (3, 16, 16)
    full = ResizeCenterCrop(40, resize=40)(img_CHW)
    assert torch.equal(full, img_CHW[:, :, 10:50])


def test_normalize():
    x_BCHW = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2)
    out = normalize(x_BCHW, mean=(0.5,), std=(0.5,))
    assert torch.allclose(out, torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2))
    # per channel, uint8 and 0..1 float input alike: (x / 255 - mean) / std
    img = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    want = torch.stack([(img[:, c].double() / 255 - mean[c]) / std[c] for c in range(3)], dim=1)
    torch.testing.assert_close(normalize(img, mean, std).double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(normalize(img.float() / 255, mean, std).double(), want, rtol=0, atol=1e-5)


def test_shards_command(image_folder_tree: Path, tmp_path: Path, capsys):
    parser = argparse.ArgumentParser()
    shards_command.add_arguments(parser)
    args = parser.parse_args([str(image_folder_tree), str(tmp_path / "out"), "--labeled", "--maxcount", "5",
                              "--workers", "2"])
    assert shards_command.run(args) == 0
    assert "3 shards, 12 samples (3 classes)" in capsys.readouterr().out
    assert read_manifest(tmp_path / "out").classes == ("ant", "mole", "zebra")


@pytest.mark.parametrize("tar_format, mode", [(tarfile.PAX_FORMAT, "w"), (tarfile.GNU_FORMAT, "w:gz")])
def test_tar_stream_matches_tarfile(tmp_path: Path, tar_format: int, mode: str):
    from convssl.data.tar_stream import iter_shard

    names = ["a.png", "a.cls", "dir/b.seg.png", "long" * 40 + "/name" * 20 + ".jpg", "ü/ñ.png"]
    path = tmp_path / "shard.tar"
    with tarfile.open(path, mode, format=tar_format) as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size = 300 * i
            tar.addfile(info, io.BytesIO(bytes([i]) * info.size))
    with tarfile.open(path) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    got = [(f"{key}.{ext}", data) for key, members in iter_shard(str(path)) for ext, data in members.items()]
    assert sorted(got) == sorted(expected)  # webdataset groups by key; order within a sample is free
