"""Layer-wise learning-rate decay over an encoder's stages, for fine-tuning.

The head learns at the full rate and each stage below it at ``decay`` times the rate of
the stage above: stage i of S (0 = nearest the input) gets ``decay ** (S - i)``, the
head ``decay ** 0 = 1`` (BEiT, Bao et al. 2022; MAE, He et al. 2022; SparK's ImageNet
fine-tuning uses a decay of 0.7 for ResNet-50 and ConvNeXt, ``downstream_imagenet/arg.py``).

A parameter belongs to the stage whose module holds it; a parameter outside every stage
module (a ResNet's ``conv1``/``bn1`` stem) belongs to the first stage after it in the
model's module order, as the Encoder folds a lone stem into the next stage. Module order
is definition order, which is execution order for torchvision and timm convnets.

Within each stage, weights get weight decay and biases / norm parameters (1-D) none,
as in ``convssl.train.optim.param_groups``.
"""

from __future__ import annotations

import torch.nn as nn

from convssl.encoders import Encoder


def stage_of_parameters(encoder: Encoder) -> dict[str, int]:
    """``{parameter name in encoder.model: stage index}``."""
    modules = [name for name, _ in encoder.model.named_modules()]
    position = {name: i for i, name in enumerate(modules)}
    stage_pos = [position[name] for name in encoder.stage_names]
    out = {}
    for pname, _ in encoder.model.named_parameters():
        owner = pname.rpartition(".")[0]
        inside = [i for i, s in enumerate(encoder.stage_names) if owner == s or owner.startswith(f"{s}.")]
        if inside:
            out[pname] = inside[0]
        else:
            after = [i for i, p in enumerate(stage_pos) if p >= position[owner]]
            out[pname] = after[0] if after else len(stage_pos) - 1
    return out


def layer_decay_groups(encoder: Encoder, head: nn.Module, *, weight_decay: float, decay: float) -> list[dict]:
    """Optimizer parameter groups, one per (stage or head, decayed or not).

    Each group has ``params``, ``weight_decay``, ``adapt`` (weights: True), ``lr_scale``
    (multiply the scheduled lr by it) and ``name`` (e.g. ``layer2/decay``).
    """
    if not 0 < decay <= 1:
        raise ValueError(f"layer decay must be in (0, 1], got {decay}")
    num_stages = len(encoder.stages)
    stage_of = stage_of_parameters(encoder)
    groups: dict[tuple[str, bool], dict] = {}

    def add(where: str, scale: float, param) -> None:
        weights = param.ndim > 1
        group = groups.setdefault((where, weights), {
            "params": [], "weight_decay": weight_decay if weights else 0.0, "adapt": weights,
            "lr_scale": scale, "name": f"{where}/{'decay' if weights else 'no_decay'}"})
        group["params"].append(param)

    for pname, param in encoder.model.named_parameters():
        if param.requires_grad:
            i = stage_of[pname]
            add(encoder.stage_names[i], decay ** (num_stages - i), param)
    for param in head.parameters():
        if param.requires_grad:
            add("head", 1.0, param)
    return list(groups.values())
