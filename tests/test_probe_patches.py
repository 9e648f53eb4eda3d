"""``probe --patch-grid N``: features averaged over N x N patches (Kolesnikov et al. 2019),
checked against encoding each patch by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convssl.encoders import build_encoder
from convssl.errors import EncoderError
from convssl.eval.features import check_patch_grid, cut_patch_grid, extract_features


def test_patches_are_the_grid_cells_in_reading_order_per_image():
    x = torch.arange(2 * 1 * 7 * 7).reshape(2, 1, 7, 7)
    patches = cut_patch_grid(x, 3)  # 2 px cells of the central 6 x 6 square
    assert patches.shape == (18, 1, 2, 2)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                assert torch.equal(patches[b * 9 + i * 3 + j], x[b, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2])


def test_patch_grid_features_are_the_mean_of_each_patch_encoded_alone():
    torch.manual_seed(0)
    enc = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16).eval()
    img = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    feats = extract_features(enc, [(img, torch.tensor([0, 1, 2]))], mean=(0.5,), std=(0.25,), max_dims=0,
                             patch_grid=2)
    x = (img.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        for stage, got in enumerate(feats.stages):
            quads = [x[:, :, i:i + 16, j:j + 16] for i in (0, 16) for j in (0, 16)]
            expected = torch.stack([F.adaptive_avg_pool2d(enc(q)[stage], 1).flatten(1) for q in quads]).mean(0)
            # features are kept in float16 (relative rounding <= 2^-11)
            torch.testing.assert_close(got.feats_ND.float(), expected, rtol=2e-3, atol=1e-3)


def test_patches_smaller_than_the_encoder_takes_name_the_limit():
    enc = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16)  # total reduction 4
    check_patch_grid(enc, 32, 8)
    with pytest.raises(EncoderError, match=r"3 px patches, smaller than the encoder's minimum input size 4 px \(its total reduction\); "
                                           r"use --patch-grid <= 8"):
        check_patch_grid(enc, 32, 10)
