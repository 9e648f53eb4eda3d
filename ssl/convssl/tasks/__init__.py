"""Pretext tasks. Each is one file holding one ``nn.Module``; see ``convssl.registry``.

The contract every task follows (no base class):

- ``Config``: a class attribute, a frozen keyword-only dataclass of the task's own
  hyper-parameters (the recipe's ``task:`` section minus ``name``).
- ``__init__(self, encoder: Encoder, cfg: Config, data: DataConfig)``: the task owns the
  encoder (``self.encoder``) and its heads, so wrapping the task in DDP syncs both.
- ``forward(self, batch: dict) -> dict[str, Tensor]``: ``batch["img"]`` is a uint8
  ``[B, C, H, W]`` tensor on the training device (a list of such tensors when
  ``data.views > 1``); returns scalars, ``"loss"`` required, the rest logged.
- optional ``after_step(self, step: int, total_steps: int)``: called after each
  optimizer step (momentum encoders).
- optional ``pictures(self, batch: dict) -> Tensor [3, H, W] in 0..1``: an image grid
  the trainer saves every ``train.image_every`` steps.
- optional ``trainable_encoder`` property if the encoder to export is not ``self.encoder``.

Tasks never touch the optimizer, the data loader or the file system.
"""
