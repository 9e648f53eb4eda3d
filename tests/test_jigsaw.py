"""Jigsaw: undoing the labelled permutation restores the tiles, the permutation set keeps
its promised Hamming distance and follows the seed, small tiles are refused clearly, and a
few steps on real shards beat chance."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from convssl.data.config import DataConfig
from convssl.encoders import build_encoder
from convssl.errors import ConfigError, EncoderError
from convssl.tasks.jigsaw import Jigsaw, guaranteed_min_distance, hamming_permutations
from convssl.views.crops import RandomResizedCrop
from convssl.views.grid import grid_geometry
from convssl.views.jigsaw_tiles import JigsawTiles

from test_context import numbered_cells, real_batches


def hamming(a, b) -> int:
    return sum(x != y for x, y in zip(a, b))


def test_undoing_the_labelled_permutation_restores_the_tile_order():
    size = 64
    geometry = grid_geometry(size, 0.85, 0.0, 0.15)
    img = numbered_cells(size, geometry.margin, geometry.cell)
    perms = hamming_permutations(10, seed=3)
    transform = JigsawTiles(RandomResizedCrop(size, (1.0, 1.0), (1.0, 1.0), flip=False), geometry, perms, 0.0)
    labels = set()
    for seed in range(20):
        out = transform(img, torch.Generator().manual_seed(seed))
        tiles, label = out["tiles"], out["label"]
        labels.add(label)
        assert tiles.shape == (9, 1, geometry.patch, geometry.patch)
        restored = torch.empty_like(tiles)
        restored[perms[label]] = tiles  # slot i holds grid cell perm[i]
        for cell in range(9):
            assert torch.all(restored[cell] == 10 * (cell + 1)), f"cell {cell} not restored (label {label})"
        if label != 0 or not torch.equal(perms[0], torch.arange(9)):
            assert not all(torch.all(tiles[c] == 10 * (c + 1)) for c in range(9)), "the tiles were shuffled"
    assert len(labels) > 5


def test_the_set_has_the_promised_minimum_hamming_distance():
    perms = hamming_permutations(100).tolist()
    assert len(perms) == 100 and all(sorted(p) == list(range(9)) for p in perms)
    nearest = min(hamming(a, b) for a, b in itertools.combinations(perms, 2))
    # Gilbert-Varshamov for greedy selection: permutations of 9 within distance 4 of one
    # permutation: 1 + C(9,2)*1 + C(9,3)*2 + C(9,4)*9 = 1339, and 99 * 1339 < 9! = 362880,
    # while within distance 5: 1339 + C(9,5)*44 = 6883, and 99 * 6883 > 9!; so >= 5 promised.
    assert guaranteed_min_distance(100) == 5
    assert nearest >= 5, nearest
    assert guaranteed_min_distance(2) == 9 and guaranteed_min_distance(math.factorial(9)) == 2  # distinct permutations differ twice


def test_each_greedy_choice_is_farthest_from_its_nearest_chosen_permutation():
    """On 4 items (24 permutations) the set is checked against brute force: every added
    permutation has the largest distance to its nearest predecessor of all candidates."""
    chosen = hamming_permutations(8, items=4, seed=1).tolist()
    everything = list(itertools.permutations(range(4)))
    for i in range(1, len(chosen)):
        best = max(min(hamming(c, p) for p in chosen[:i]) for c in everything)
        assert min(hamming(chosen[i], p) for p in chosen[:i]) == best


def test_the_same_seed_gives_the_same_set_and_checkpoints_carry_it():
    a, b, c = hamming_permutations(10, seed=7), hamming_permutations(10, seed=7), hamming_permutations(10, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    data = DataConfig(size=48, channels=1, mean=(0.5,), std=(0.5,))
    enc = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16)
    task = Jigsaw(enc, Jigsaw.Config(permutations=10, seed=7, tile_dim=8, hidden=16), data)
    assert torch.equal(task.state_dict()["permutations"], a)
    other = Jigsaw(enc, Jigsaw.Config(permutations=10, seed=8, tile_dim=8, hidden=16), data)
    other.load_state_dict(task.state_dict())
    assert torch.equal(other.permutations, a) and torch.equal(torch.tensor(other.loader_transform().permutations), a)
    with pytest.raises(ConfigError, match="task.permutations must be 1..362880"):
        hamming_permutations(0)


def test_tiles_smaller_than_the_encoder_takes_are_refused_with_the_minimum_size():
    enc = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16)  # total reduction 4
    with pytest.raises(EncoderError, match=r"tile side is 3 px .*minimum input size 4 px.*data.size >= 15"):
        Jigsaw(enc, Jigsaw.Config(permutations=4, tile=0.75, jitter=0.25),
               DataConfig(size=12, channels=1, mean=(0.5,), std=(0.5,)))


def test_a_few_steps_on_real_shards_beat_chance():
    torch.manual_seed(0)
    data = DataConfig(size=36, channels=1, mean=(0.29,), std=(0.35,), scale=(0.6, 1.0))  # 10 px tiles
    enc = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16)
    task = Jigsaw(enc, Jigsaw.Config(permutations=10, tile=0.85, jitter=0.15, tile_dim=32, hidden=64), data).train()
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)
    accs = []
    for batch in real_batches(task, 16, 12):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        accs.append(out["acc"].item())
    assert sum(accs[-4:]) / 4 > 0.2, accs  # chance is 1/10
