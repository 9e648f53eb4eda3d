"""The run directory's logs: metrics.jsonl, TensorBoard events, picture PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class RunLog:
    """Appends metrics as JSON lines and TensorBoard scalars."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.metrics = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # a dependency; tolerate an environment without it
            self.tb = None
        else:
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.metrics.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def picture(self, step: int, image_3HW: torch.Tensor) -> Path:
        from PIL import Image

        folder = self.run_dir / "images"
        folder.mkdir(exist_ok=True)
        array = (image_3HW.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        path = folder / f"step-{step:08d}.png"
        Image.fromarray(array).save(path)
        if self.tb is not None:
            self.tb.add_image("pictures", image_3HW.float().clamp(0, 1), step)
        return path

    def close(self) -> None:
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()
