"""convssl embed: a picture from a real checkpoint; PCA coordinates against an independent SVD."""

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import custom_nets
from convssl.cli import main
from convssl.views.crops import ResizeCenterCrop
from convssl.views.normalize import normalize
from convssl.data.shard_dataset import ShardDataset
from convssl.views.crop_views import Named
from convssl.eval.embed import PALETTE, neighbour_agreement
from convssl.recipe import recipe_from_dict
from convssl import checkpoint as ckpt_io
from convssl.train.trainer import pretrain

ROOT = Path(__file__).resolve().parents[1]
TEST = str(ROOT / "data/fmnist/test")
TRUST = ["--trust-encoder", "custom_nets:small_convnet"]  # the test's own user encoder


@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory):
    """Two steps of real rotation pretraining on the embedded shards."""
    recipe = recipe_from_dict({
        "encoder": {"spec": "custom_nets:small_convnet", "in_chans": 1},
        "data": {"size": 16, "channels": 1, "mean": [0.286], "std": [0.353], "batch_size": 8, "workers": 0,
                 "shuffle_buffer": 16},
        "task": {"name": "rotation", "head": "linear"},
        "optim": {"name": "sgd", "lr_per_256": 0.5},
        "train": {"max_steps": 2, "ckpt_every": 0, "log_every": 1, "channels_last": False},
    })
    run = tmp_path_factory.mktemp("run")
    return Path(pretrain(recipe, str(ROOT / "data/fmnist/unlabeled"), run, progress=False)["checkpoint"])


def test_pca_map_of_a_real_checkpoint(real_ckpt, tmp_path, capsys):
    out = tmp_path / "map"
    assert main(["embed", "--ckpt", str(real_ckpt), *TRUST, "--data", TEST, "--out", str(out), "--method", "pca",
                 "--max-samples", "300", "--workers", "0"]) == 0
    assert "PCA of 300 samples" in capsys.readouterr().out
    record = json.loads((out / "embed.json").read_text())
    assert record["method"] == "pca" and record["count"] == 300 and record["labeled"]
    assert record["classes"][0] == "T-shirt/top" and 0 <= record["neighbour_label_agreement"] <= 1

    rows = list(csv.DictReader(open(out / "embedding.csv")))
    with tarfile.open(TEST + "/shard-000000.tar") as tar:
        truth = {m.name[:-4]: int(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".cls")}
    assert len(rows) == 300 and all(int(r["label"]) == truth[r["key"]] for r in rows)

    # Independent reference: the plain model's last stage, mean-pooled, standardised, numpy SVD.
    ckpt = ckpt_io.load(real_ckpt)
    model = custom_nets.small_convnet(in_chans=1)
    model.load_state_dict(ckpt["encoder"], strict=False)
    model.eval()
    images = {s["key"]: s["img"] for s in ShardDataset(TEST, transform=Named(ResizeCenterCrop(16, resize=16)), channels=1)}
    x = normalize(torch.stack([images[r["key"]] for r in rows]), [0.286], [0.353])
    with torch.no_grad():
        feats = model[:13](x).mean(dim=(2, 3)).double().numpy()  # modules 0-12: the last stage ends at 12
    feats = (feats - feats.mean(0)) / feats.std(0, ddof=1).clip(1e-6)
    u, s, _ = np.linalg.svd(feats - feats.mean(0), full_matrices=False)
    want = u[:, :2] * s[:2]
    got = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    for j in range(2):  # a principal component's sign is arbitrary
        sign = np.sign(np.dot(want[:, j], got[:, j]))
        np.testing.assert_allclose(got[:, j], sign * want[:, j], atol=1e-3 * np.abs(want).max())

    img = Image.open(out / "embedding.png").convert("RGB")
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert img.size == (810, 680) and set(PALETTE[:10]) <= colours  # every class drawn (and in the legend)


def test_tsne_and_unlabeled_data(real_ckpt, tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "tsne"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # t-SNE follows torch's thread count (OpenMP threads spin on a shared machine)
    try:
        done = main(["embed", "--ckpt", str(real_ckpt), *TRUST, "--data", str(ROOT / "data/fmnist/unlabeled"),
                     "--out", str(out), "--method", "tsne", "--max-samples", "120", "--workers", "0"])
    finally:
        torch.set_num_threads(threads)
    assert done == 0
    record = json.loads((out / "embed.json").read_text())
    assert record["method"] == "tsne" and not record["labeled"] and record["neighbour_label_agreement"] is None
    assert Image.open(out / "embedding.png").size == (810, 680)


def test_neighbour_agreement_against_a_hand_count():
    xy = torch.tensor([[0.0, 0], [0, 1], [0, 2], [10, 0], [10, 1], [10, 2.0]])
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    # k=2: point0 -> {1 (same), 2 (diff)} 0.5; point1 -> {0, 2} 0.5; point2 -> {1, 0} 0.0;
    # points 3-5: both neighbours on their side, all label 1 -> 1.0 each.
    assert neighbour_agreement(xy, labels, k=2) == pytest.approx((0.5 + 0.5 + 0 + 3) / 6)


def test_bad_input_is_one_clear_line(real_ckpt, tmp_path, capsys):
    assert main(["embed", "--ckpt", str(real_ckpt), *TRUST, "--data", TEST, "--out", str(tmp_path), "--stage", "layer9",
                 "--method", "pca"]) == 2
    assert "is not a stage of this encoder" in capsys.readouterr().err
