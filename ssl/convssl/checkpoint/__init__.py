"""Checkpoints, below the trainer so that every reader can use them: the file format and
its atomic save / safe load (``files``), the encoder rebuilt from a checkpoint under the
trust rules (``encoder``), the input its encoder is fed (``input_spec``) and the
provenance a run records (``versions``). Train, eval, exports and the commands import
them from here::

    from convssl import checkpoint as ckpt_io
    ckpt = ckpt_io.load("runs/rot")               # the latest checkpoint of a run folder
    encoder, ckpt = ckpt_io.load_encoder(ckpt["path"])
"""

from convssl.checkpoint.encoder import BUILTIN_SOURCES, encoder_config, load_encoder
from convssl.checkpoint.files import FORMAT, latest, load, non_finite, require_finite, save_atomic, step_path

__all__ = ["FORMAT", "BUILTIN_SOURCES", "encoder_config", "latest", "load", "load_encoder", "non_finite",
           "require_finite", "save_atomic", "step_path"]
