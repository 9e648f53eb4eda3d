"""Context prediction: labels name the neighbour's true position, patches respect the grid,
too-small patches are refused clearly, and a few steps on real shards beat chance."""

from __future__ import annotations

import itertools

import pytest
import torch

from convssl.data.config import DataConfig
from convssl.encoders import build_encoder
from convssl.errors import EncoderError
from convssl.tasks.context import ContextPrediction
from convssl.views.context_patches import ContextPatches
from convssl.views.crops import RandomResizedCrop
from convssl.views.grid import cut_patches, grid_geometry, patch_boxes

from convssl.data.collate import collate_samples
from convssl.data.shard_dataset import ShardDataset

from test_tasks import UNLABELED


def real_batches(task, batch_size: int, steps: int) -> list[dict]:
    """``steps`` consecutive batches of the embedded unlabeled shards, cut by the task's own
    loader transform (fresh images in every batch)."""
    data = ShardDataset(UNLABELED, transform=task.loader_transform(), channels=1, shuffle_buffer=64)
    samples, batches = [], []
    for sample in data:
        samples.append(sample)
        if len(samples) == batch_size:
            batches.append(collate_samples(samples))
            samples = []
            if len(batches) == steps:
                return batches
    raise AssertionError("not enough samples")


def numbered_cells(size: int, margin: int, cell: int) -> torch.Tensor:
    """A 1-channel image whose 3x3 grid cells hold the values 10 * (row * 3 + col + 1)."""
    img = torch.zeros(1, size, size, dtype=torch.uint8)
    for row, col in itertools.product(range(3), range(3)):
        img[:, margin + row * cell: margin + (row + 1) * cell, margin + col * cell: margin + (col + 1) * cell] = \
            10 * (row * 3 + col + 1)
    return img


@pytest.mark.parametrize("size, patch, gap, jitter", [(64, 0.75, 0.1, 0.15), (255, 64 / 85, 0.0, 21 / 85),
                                                      (100, 0.5, 0.3, 0.2)])
def test_a_pair_labelled_k_holds_the_neighbour_at_position_k(size, patch, gap, jitter):
    cfg = ContextPrediction.Config(patch=patch, gap=gap, jitter=jitter, pairs=8, grayscale_p=0.0)
    geometry = grid_geometry(size, patch, gap, jitter)
    img = numbered_cells(size, geometry.margin, geometry.cell)
    transform = ContextPatches(RandomResizedCrop(size, (1.0, 1.0), (1.0, 1.0), flip=False), geometry,
                               pairs=cfg.pairs, grayscale_p=cfg.grayscale_p)
    # label k counts the 8 neighbours in reading order, skipping the centre (Doersch et al. fig. 2)
    expected_cell = {0: (0, 0), 1: (0, 1), 2: (0, 2), 3: (1, 0), 4: (1, 2), 5: (2, 0), 6: (2, 1), 7: (2, 2)}
    seen = set()
    for seed in range(10):
        out = transform(img, torch.Generator().manual_seed(seed))
        patches, labels = out["patches"], out["label"]
        assert patches.shape == (9, 1, geometry.patch, geometry.patch) and sorted(labels.tolist()) == list(range(8))
        assert torch.all(patches[0] == 10 * (4 + 1)), "the first patch is the centre"
        for neighbour, k in zip(patches[1:], labels.tolist()):
            row, col = expected_cell[k]
            assert torch.all(neighbour == 10 * (row * 3 + col + 1)), f"label {k} is not at {(row, col)}"
        seen.add(tuple(labels.tolist()))
    assert len(seen) > 1, "the neighbours' order is random"


@pytest.mark.parametrize("size, patch, gap, jitter", [(64, 0.75, 0.1, 0.15), (255, 64 / 85, 0.0, 21 / 85),
                                                      (96, 0.5, 0.25, 0.25), (33, 0.6, 0.2, 0.5)])
def test_patches_stay_inside_and_apart_by_the_gap_under_any_jitter(size, patch, gap, jitter):
    g = grid_geometry(size, patch, gap, jitter)
    assert g.gap >= gap * g.cell and g.patch + g.gap + g.jitter <= g.cell
    offsets = set()
    for seed in range(300):
        boxes = patch_boxes(g, torch.Generator().manual_seed(seed))
        for i, (top, left) in enumerate(boxes):
            assert 0 <= top and top + g.patch <= size and 0 <= left and left + g.patch <= size
            row, col = divmod(i, 3)
            offsets.add(top - g.margin - row * g.cell - g.base)
            if col < 2:  # right neighbour: the horizontal space between them
                assert boxes[i + 1][1] - (left + g.patch) >= g.gap
            if row < 2:  # neighbour below
                assert boxes[i + 3][0] - (top + g.patch) >= g.gap
    assert offsets == set(range(g.jitter + 1)), "the draws cover the whole jitter range, its extremes included"


def test_patches_smaller_than_the_encoder_takes_are_refused_with_the_minimum_size():
    enc = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16)  # total reduction 4
    cfg = ContextPrediction.Config(patch=0.75, gap=0.1, jitter=0.15, hidden=16)
    with pytest.raises(EncoderError, match=r"patch side is 3 px .*minimum input size 4 px.*data.size >= 15"):
        ContextPrediction(enc, cfg, DataConfig(size=12, channels=1, mean=(0.5,), std=(0.5,)))
    task = ContextPrediction(enc, cfg, DataConfig(size=15, channels=1, mean=(0.5,), std=(0.5,)))
    assert task.geometry.patch == 4  # the size the message names works


def test_a_few_steps_on_real_shards_beat_chance():
    torch.manual_seed(0)
    data = DataConfig(size=36, channels=1, mean=(0.29,), std=(0.35,), scale=(0.6, 1.0))  # 9 px patches
    enc = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16)
    task = ContextPrediction(enc, ContextPrediction.Config(patch=0.75, gap=0.1, jitter=0.15, pairs=8,
                                                           hidden=64, dropout=0.0), data).train()
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)
    batches = real_batches(task, 16, 12)  # 128 pairs per step
    accs = []
    for batch in batches:
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        accs.append(out["acc"].item())
    # chance is 1/8; the last steps see new images (each batch is fresh)
    assert sum(accs[-4:]) / 4 > 0.2, accs  # measured 0.30
