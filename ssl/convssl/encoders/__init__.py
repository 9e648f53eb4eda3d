"""Encoders: any convnet as a list of stages (``torchvision:``, ``timm:``, ``pkg.mod:fn``)."""

from convssl.encoders.encoder import Encoder, EncoderConfig, build_bare_model, build_encoder
from convssl.encoders.stages import Stage

__all__ = ["Encoder", "EncoderConfig", "Stage", "build_encoder", "build_bare_model"]
