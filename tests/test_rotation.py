"""Rotation prediction: labels match the rotation applied, the task trains its encoder."""

import torch

from convssl.data.config import DataConfig
from convssl.encoders import build_encoder
from convssl.tasks.rotation import RotationPrediction, rotate_all


def test_undoing_the_labelled_rotation_restores_the_input():
    x = torch.randint(0, 255, (3, 2, 8, 8), dtype=torch.uint8)
    rotated, labels = rotate_all(x)
    assert rotated.shape == (12, 2, 8, 8) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for img, k, original in zip(rotated, labels, x.repeat(4, 1, 1, 1)):
        assert torch.equal(torch.rot90(img, -int(k), (1, 2)), original)


def test_label_one_is_counter_clockwise():
    # Gidaris et al. label k = k x 90 degrees counter-clockwise (torch.rot90's direction)
    x = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    x[0, 0, 0, 2] = 1  # top-right corner
    rotated, _ = rotate_all(x)
    assert rotated[1, 0, 0, 0] == 1  # top-right -> top-left after 90 degrees counter-clockwise


def test_task_loss_and_gradients_reach_the_encoder():
    torch.manual_seed(0)
    data = DataConfig(size=16, channels=1, mean=(0.5,), std=(0.5,))
    enc = build_encoder("custom_nets:small_convnet", in_chans=1, input_size=16)
    task = RotationPrediction(enc, RotationPrediction.Config(head="linear"), data)
    out = task({"img": [torch.randint(0, 255, (4, 1, 16, 16), dtype=torch.uint8)]})
    assert torch.isfinite(out["loss"]) and 0 <= out["acc"] <= 1
    # four balanced classes and an untrained head: cross-entropy near log(4)
    assert abs(out["loss"].item() - torch.log(torch.tensor(4.0)).item()) < 0.7
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
