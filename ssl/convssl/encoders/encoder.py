"""The Encoder: any convnet, unchanged, seen as a list of stages.

Legend: B batch, C channels, H/W input size, h/w a stage's size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from convssl.encoders import stem
from convssl.encoders.sources import build_model
from convssl.encoders.stages import discover, stages_for_names, stages_lost_at
from convssl.errors import EncoderError


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """How to build an encoder; stored in checkpoints and export sidecars.

    spec: ``torchvision:NAME``, ``timm:NAME`` or ``package.module:callable``.
    in_chans: input channels (1 for grayscale data).
    small_input: ResNet-family stem for 28-64 px images (3x3 stride-1 conv1, no max-pool).
    input_size: the training input size; stages are discovered at this size.
    stages: module names whose outputs are the stages; empty = discovered.
    kwargs: extra keyword arguments for the model builder (e.g. ``drop_path_rate``).
    init: starting weights for pretraining ("" = random): a state dict file, a convssl
        checkpoint, ``torchvision:<WEIGHTS>`` or ``timm:pretrained`` (``encoders.init_weights``;
        applied where a run starts, never by ``build_encoder``).
    """

    spec: str = "torchvision:resnet18"
    in_chans: int = 3
    small_input: bool = False
    input_size: int = 224
    stages: tuple[str, ...] = ()
    kwargs: dict = field(default_factory=dict)
    init: str = ""


class _StopForward(Exception):
    """Ends a full-model forward once the last stage map is captured (hook mode)."""


class Encoder(nn.Module):
    """Wraps a convnet without changing it; returns its stage maps.

    ``self.model`` is the user's module: its ``state_dict`` keys are the original model's
    keys, minus the classifier head, which is replaced by ``nn.Identity`` (so every
    parameter is trained and distributed training needs no unused-parameter search).

    forward(x_BCHW) -> list of stage maps [B, C_i, H/r_i, W/r_i]
    pool(x_BCHW)    -> [B, C_last] global average of the last stage
    stage_maps(model, x_BCHW) -> the stage maps of ``model``, this encoder's model or a
        module of the same layout that shares its weights (the sparse twin, ``convssl.sparse``)
    """

    def __init__(self, model: nn.Module, *, input_size: int = 224, in_chans: int | None = None,
                 stages: list[str] | tuple[str, ...] = (), config: EncoderConfig | None = None):
        super().__init__()
        self.model = model
        self.config = config
        self.init_source: dict | None = None  # where the starting weights came from (init_weights.apply_init)
        self.in_chans = in_chans or stem.conv_in_channels(model)
        self.input_size = input_size
        if not isinstance(input_size, int) or input_size < 1:
            raise EncoderError(f"input size {input_size!r} must be a positive number of pixels")
        probe = torch.zeros(2, self.in_chans, input_size, input_size)
        was_training = model.training
        model.eval()
        trunk = discover(model, probe)
        if trunk.collapsed and not stages:
            self._refuse_lost_stages(model, trunk, config)
        if stages:
            self.stages = stages_for_names(model, probe, list(stages))
            self._chain = trunk.chain if set(stages) <= set(trunk.chain) else []
        else:
            self.stages = trunk.stages
            self._chain = trunk.chain
        self._chain = self._chain[: self._chain.index(self.stages[-1].name) + 1] if self._chain else []
        self.head = list(trunk.head)
        for name in self.head:
            stem.replace_submodule(model, name, nn.Identity())
        if self._chain and not self._chain_matches(probe):
            self._chain = []  # the forward is not a plain chain: capture stages with hooks
        model.train(was_training)

    def _refuse_lost_stages(self, model: nn.Module, trunk, config: EncoderConfig | None) -> None:
        """Stages discovered at a size where maps shrink to 1x1 merge or fall into the (dropped)
        head: a ResNet at 4 px would train a 3k-parameter encoder and export it as verified."""
        found = stages_lost_at(model, self.in_chans, trunk)
        if found is None:
            return
        lost, smallest = found
        name = config.spec if config else type(model).__name__
        hint = " (or encoder.small_input: true, a stem for 28-64 px images)" if config and not config.small_input else ""
        raise EncoderError(
            f"input size {self.input_size} px is too small for {name}: its stage(s) {', '.join(lost)} shrink to 1x1 "
            f"maps there and would merge or be dropped with the head (found at this size: "
            f"{', '.join(s.name for s in trunk.stages)}). Use data.size / encoder.input_size >= {smallest}{hint}")

    # ---- declared layout -------------------------------------------------------------
    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def channels(self) -> list[int]:
        return [s.channels for s in self.stages]

    @property
    def reductions(self) -> list[int]:
        return [s.reduction for s in self.stages]

    @property
    def feature_dim(self) -> int:
        return self.stages[-1].channels

    @property
    def mode(self) -> str:
        """``chain`` (stages run module by module) or ``hooks`` (full forward, captured)."""
        return "chain" if self._chain else "hooks"

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x_BCHW: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x_BCHW)
        return self.stage_maps(self.model, x_BCHW)

    def stage_maps(self, model: nn.Module, x_BCHW: torch.Tensor) -> list[torch.Tensor]:
        """The stage maps of ``model`` (``self.model``, or a module with the same submodule
        names, such as its sparse twin), run the way this encoder runs its own model."""
        return self._forward_chain(model, x_BCHW) if self._chain else self._forward_captured(model, x_BCHW)

    def pool(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self(x_BCHW)[-1], 1).flatten(1)

    def _forward_chain(self, model, x):
        wanted, maps = set(self.stage_names), []
        for name in self._chain:
            x = model.get_submodule(name)(x)
            if name in wanted:
                maps.append(x)
        return maps

    def _forward_captured(self, model, x):
        maps: dict[str, torch.Tensor] = {}
        last = self.stages[-1].name

        def grab(name):
            def hook(_m, _i, out):
                maps[name] = out
                if name == last:
                    raise _StopForward
            return hook

        handles = [model.get_submodule(n).register_forward_hook(grab(n)) for n in self.stage_names]
        try:
            model(x)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return [maps[n] for n in self.stage_names]

    def _chain_matches(self, probe) -> bool:
        with torch.no_grad():
            via_chain = self._forward_chain(self.model, probe)
            via_hooks = self._forward_captured(self.model, probe)
        return all(a.shape == b.shape and torch.allclose(a, b) for a, b in zip(via_chain, via_hooks))

    def check_input(self, x_BCHW: torch.Tensor) -> None:
        """Clear errors for inputs the encoder cannot take (instead of a deep torch error)."""
        if x_BCHW.dim() != 4:
            raise EncoderError(f"encoder input must be BxCxHxW, got shape {tuple(x_BCHW.shape)}")
        if x_BCHW.shape[1] != self.in_chans:
            raise EncoderError(
                f"encoder takes {self.in_chans}-channel images, got {x_BCHW.shape[1]} channels; "
                f"set encoder.in_chans={x_BCHW.shape[1]} or data.channels={self.in_chans}"
            )
        smallest = min(x_BCHW.shape[-2:])
        if smallest < self.reductions[-1]:
            raise EncoderError(
                f"input {tuple(x_BCHW.shape[-2:])} is smaller than the encoder's total reduction "
                f"{self.reductions[-1]}; use a larger data.size"
                + (" or encoder.small_input=true" if self.config and not self.config.small_input else "")
            )

    # ---- weights -----------------------------------------------------------------------
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the original model's keys (classifier head excluded)."""
        return self.model.state_dict()

    def describe(self) -> list[dict]:
        return [asdict(s) for s in self.stages]



def build_encoder(config: EncoderConfig | str, **overrides) -> Encoder:
    """Build an Encoder from a config (or a spec string plus keyword overrides)."""
    if isinstance(config, str):
        config = EncoderConfig(spec=config, **overrides)
    elif overrides:
        config = EncoderConfig(**{**asdict(config), **overrides})
    model = build_bare_model(config)
    return Encoder(model, input_size=config.input_size, in_chans=config.in_chans,
                   stages=config.stages, config=config)


def build_bare_model(config: EncoderConfig) -> nn.Module:
    """The original architecture with convssl's stem surgery, head still attached.

    Export loads weights into exactly this (and, for the default stem, into the plain
    torchvision/timm model).
    """
    model, took_in_chans = build_model(config.spec, in_chans=config.in_chans, **config.kwargs)
    if config.small_input:
        stem.small_input_stem(model)
    if not took_in_chans:
        stem.set_in_chans(model, config.in_chans, probe_size=max(config.input_size, 32))
    return model
