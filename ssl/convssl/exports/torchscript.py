"""TorchScript export of the backbone (traced; dynamic batch), checked against eager torch.

``torch.jit.trace`` records the convolutions a forward runs, so it takes any encoder the
Encoder can run, also models that ``torch.jit.script`` cannot compile. PyTorch marks
TorchScript as deprecated in favour of ``torch.export``; files load with
``torch.jit.load`` in Python and in LibTorch (C++).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from convssl.atomic import write_atomic
from convssl.errors import ConvsslError
from convssl.exports.deployable import example_input, load_deployable, max_abs_differences, resolve_out, write_sidecar


def export_torchscript(ckpt_path: str | Path, out_path: str | Path, trust: tuple[str, ...] | list[str] = ()) -> dict:
    """Write the backbone of ``ckpt_path`` as a traced TorchScript file to ``out_path`` (a
    folder: ``backbone.torchscript.pt`` in it) and ``out_path + ".json"``; return the
    sidecar, with the max abs differences of the reloaded file from eager torch at
    several batch sizes."""
    module, info = load_deployable(ckpt_path, trust)
    out_path = resolve_out(out_path, "backbone.torchscript.pt")
    checked = {}

    def write(tmp: Path) -> None:  # the file is renamed into place only once it passed the check
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
            # The Encoder's input checks compare shapes; in the trace they become constants,
            # which is right: only the batch size may vary, and the check above proves it does.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            try:
                traced = torch.jit.trace(module, (example_input(info, 2),), check_trace=False)
            except Exception as exc:  # tracing errors carry many types
                raise ConvsslError(f"TorchScript tracing failed ({type(exc).__name__}: {exc}); "
                                   "try --format onnx or a plain weights export") from exc
            torch.jit.save(traced, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location="cpu")
        checked["diffs"] = max_abs_differences(module, lambda x: loaded(x), info)

    write_atomic(out_path, write)
    return write_sidecar(out_path, "torchscript", module, info, checked["diffs"],
                         {"load_example": "model = torch.jit.load(path); outputs = model(x_normalised)"})
