"""The backbone as a self-contained inference module, for ONNX and TorchScript export.

``DeployableBackbone`` takes a normalised float batch ``x_BCHW`` (the normalisation is
in the sidecar, not in the graph) and returns every stage map and the globally pooled
last stage, as a tuple in a fixed order. The batch dimension is dynamic; height and
width are the recipe's input size.

A deployment sidecar (``OUT.json``) says how to feed the file and what comes out, and
records the check made at export: the runtime's outputs against eager PyTorch on the
same random inputs, at several batch sizes.

Legend: B batch, C channels, H/W input size, D pooled feature dims.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from convssl.atomic import clean_stale_temps, write_atomic
from convssl.config import to_dict
from convssl.encoders import Encoder
from convssl.encoders.from_checkpoint import load_encoder
from convssl.encoders.input_spec import input_spec
from convssl.errors import ConvsslError
from convssl.checkpoint.versions import versions
from convssl.writable import ensure_writable_dir

SIDECAR_FORMAT = "convssl-deploy/1"
CHECK_BATCH_SIZES = (1, 2, 5)
TOLERANCE = 1e-4  # max abs difference allowed, relative to max(1, the largest |output|)


class DeployableBackbone(nn.Module):
    """``forward(x_BCHW) -> (stage_0, ..., stage_last, pooled_BD)``, eval-mode weights.

    An encoder whose forward is a chain of modules runs as the Encoder runs it. One that
    needs hooks (a forward that is not a chain) runs the whole model (its head is an
    ``nn.Identity``) with hooks that only record the stage maps: the Encoder's early stop
    (an exception out of the last stage's hook) cannot be exported by ``torch.export``.
    """

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.encoder(x_BCHW) if self.encoder.mode == "chain" else self._captured(x_BCHW)
        return (*maps, F.adaptive_avg_pool2d(maps[-1], 1).flatten(1))

    def _captured(self, x_BCHW: torch.Tensor) -> list[torch.Tensor]:
        self.encoder.check_input(x_BCHW)
        got: dict[str, torch.Tensor] = {}
        model = self.encoder.model
        handles = [model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: got.__setitem__(name, out)) for name in self.encoder.stage_names]
        try:
            model(x_BCHW)
        finally:
            for handle in handles:
                handle.remove()
        return [got[name] for name in self.encoder.stage_names]


def output_names(encoder: Encoder) -> list[str]:
    """``stage0_layer1, ..., pooled``: valid identifiers in every runtime."""
    return [f"stage{i}_{re.sub(r'[^0-9A-Za-z_]', '_', name)}" for i, name in enumerate(encoder.stage_names)] + ["pooled"]


def load_deployable(ckpt_path: str | Path, trust: tuple[str, ...] | list[str] = ()) -> tuple[DeployableBackbone, dict]:
    """The checkpoint's backbone, in eval mode on the CPU, and its input description
    (``trust``: user-code encoder specs the caller names, see ``encoders.from_checkpoint.encoder_config``)."""
    encoder, ckpt = load_encoder(ckpt_path, trust)  # refuses NaN or infinite weights, naming them
    spec = input_spec(ckpt, encoder)
    return DeployableBackbone(encoder).eval(), {"ckpt": ckpt, "size": spec.size, "channels": spec.channels,
                                                "mean": list(spec.mean), "std": list(spec.std)}


def example_input(info: dict, batch: int, seed: int = 0) -> torch.Tensor:
    """A normalised-scale random batch (N(0, 1)), the same for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, info["channels"], info["size"], info["size"], generator=generator)


def max_abs_differences(module: DeployableBackbone, run, info: dict, batch_sizes=CHECK_BATCH_SIZES) -> dict:
    """``{batch: max |runtime - torch|}`` over all outputs; ``run(x) -> list of arrays/tensors``.

    Raises ``ConvsslError`` when an output's shape differs or a difference exceeds
    ``TOLERANCE * max(1, max |output|)``.
    """
    diffs = {}
    for i, batch in enumerate(batch_sizes):
        x = example_input(info, batch, seed=i)
        with torch.no_grad():
            # The reference is the Encoder itself, so the wrapper is checked too.
            want = [t.float() for t in (*module.encoder(x), module.encoder.pool(x))]
            got = [torch.as_tensor(t).float() for t in run(x)]
        if [tuple(t.shape) for t in got] != [tuple(t.shape) for t in want]:
            raise ConvsslError(f"the exported model's outputs at batch {batch} have shapes "
                               f"{[tuple(t.shape) for t in got]}, torch's {[tuple(t.shape) for t in want]}")
        diff = max(float((g - w).abs().max()) for g, w in zip(got, want))
        scale = max(1.0, max(float(w.abs().max()) for w in want))
        if not diff <= TOLERANCE * scale:
            raise ConvsslError(f"the exported model differs from torch by {diff:.3g} at batch {batch} "
                               f"(tolerance {TOLERANCE * scale:.3g}); nothing usable was written")
        diffs[batch] = diff
    return diffs


def write_sidecar(out_path: Path, runtime: str, module: DeployableBackbone, info: dict, diffs: dict,
                  extra: dict) -> dict:
    """``OUT.json`` for a deployment file; returns the sidecar dict (with ``paths``)."""
    encoder = module.encoder
    ckpt = info["ckpt"]
    with torch.no_grad():
        shapes = [list(t.shape[1:]) for t in module(example_input(info, 1))]
    names = output_names(encoder)
    stages = [{"name": n, "stage": s.name, "reduction": s.reduction, "shape": ["batch", *shape]}
              for n, s, shape in zip(names, encoder.stages, shapes)]
    exported = versions()
    sidecar = {
        "format": SIDECAR_FORMAT,
        "file": out_path.name,
        "runtime": runtime,
        "inputs": [{"name": "image", "shape": ["batch", info["channels"], info["size"], info["size"]],
                    "dtype": "float32"}],
        "outputs": stages + [{"name": "pooled", "shape": ["batch", shapes[-1][0]],
                              "what": "global average of the last stage"}],
        "input": {"size": info["size"], "channels": info["channels"], "mean": info["mean"], "std": info["std"],
                  "scale": "pixels / 255, then (x - mean) / std per channel; the graph takes the normalised float "
                           "batch, the batch size is dynamic"},
        "verified": {"against": "eager PyTorch, eval mode, the same random inputs",
                     "max_abs_diff": {str(b): d for b, d in diffs.items()},
                     "tolerance": f"{TOLERANCE} x max(1, max |output|)"},
        "encoder": {"spec": encoder.config.spec if encoder.config else None,
                    "config": to_dict(encoder.config) if encoder.config else None},
        "recipe": ckpt["config"],
        "checkpoint": {"path": ckpt["path"], "step": ckpt.get("step")},
        "convssl_version": exported["convssl"],
        "torch_version": exported["torch"],
        "exported_with": exported,
        **extra,
    }
    sidecar_path = Path(f"{out_path}.json")
    write_atomic(sidecar_path, json.dumps(sidecar, indent=2, default=str) + "\n")
    sidecar["paths"] = {"file": str(out_path), "sidecar": str(sidecar_path)}
    return sidecar


def resolve_out(out_path: str | Path, default_name: str) -> Path:
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / default_name
    ensure_writable_dir(out_path.parent, "--out")
    clean_stale_temps(out_path.parent)  # left by an export that was killed
    return out_path
