"""The classifier task fine-tuning trains: an encoder and a fresh linear head on its
globally pooled last stage, cross-entropy on labeled batches. It keeps the task contract
(``forward(batch) -> {"loss", ...}``, ``loader_transform``, ``after_step``), so the
training loop runs it as it runs a pretext task.

Legend: B per-rank batch, C channels, H/W input size, K classes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from convssl.encoders import Encoder
from convssl.views.crops import RandomResizedCrop
from convssl.views.normalize import normalize


class Classifier(nn.Module):
    """An encoder and a fresh linear head on its globally pooled last stage.

    The head starts at weights N(0, 0.01^2) and bias 0 (as the linear classifiers of
    Goyal et al. 2019), so the first steps barely disturb the pretrained features.
    ``mean``/``std``: the normalisation the encoder was pretrained with.
    """

    manages_batchnorm_sync = False

    def __init__(self, encoder: Encoder, num_classes: int, *, mean, std, label_smoothing: float = 0.0,
                 crop: RandomResizedCrop | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.mean, self.std = list(mean), list(std)
        self.label_smoothing = label_smoothing
        self.crop = crop

    def logits(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        """Class scores ``[B, K]`` of uint8 images (normalised here)."""
        return self.head(self.encoder.pool(normalize(img_BCHW, self.mean, self.std)))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        img = batch["img"]
        logits_BK = self.logits(img[0] if isinstance(img, (list, tuple)) else img)
        cls_B = batch["cls"]
        loss = F.cross_entropy(logits_BK.float(), cls_B, label_smoothing=self.label_smoothing)
        return {"loss": loss, "acc": (logits_BK.detach().argmax(1) == cls_B).float().mean()}

    def loader_transform(self):
        """The worker-side training view: one random resized crop, maybe flipped."""
        return TrainView(self.crop)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after a step: no teacher, no queue."""

    @torch.no_grad()
    def pictures(self, batch: dict) -> None:
        """No pictures of a classifier's step."""
        return None

    def export_encoder(self) -> Encoder:
        return self.encoder


class TrainView:
    """The worker-side training transform (the reader's contract: the returned dict is
    merged into the sample)."""

    def __init__(self, crop: RandomResizedCrop):
        self.crop = crop

    def __call__(self, img_CHW: torch.Tensor, generator: torch.Generator) -> dict:
        return {"img": self.crop(img_CHW, generator)}
