"""Checkpoints, below the trainer so that every reader can use them: the file format and
its atomic save / safe load (``files``) and the provenance a run records (``versions``).
Nothing here needs an encoder: the encoder rebuilt from a checkpoint under the trust rules
and the input it is fed live in ``convssl.encoders.from_checkpoint`` and
``convssl.encoders.input_spec``. Train, eval, exports and the commands import them from here::

    from convssl import checkpoint as ckpt_io
    ckpt = ckpt_io.load("runs/rot")               # the latest checkpoint of a run folder
"""

from convssl.checkpoint.files import FORMAT, latest, load, non_finite, require_finite, save_atomic, step_path

__all__ = ["FORMAT", "latest", "load", "non_finite", "require_finite", "save_atomic", "step_path"]
