"""ONNX export of the backbone (dynamic batch), checked with onnxruntime against torch.

Uses PyTorch's ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``,
the default since PyTorch 2.9), which needs the ``onnxscript`` package; onnxruntime
runs the check. All three come with ``pip install 'convssl[onnx]'``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from convssl.atomic import write_atomic
from convssl.errors import ConvsslError
from convssl.exports.deployable import (example_input, load_deployable, max_abs_differences, output_names,
                                       resolve_out, write_sidecar)

_HINT = "pip install 'convssl[onnx]' (or pip install onnx onnxscript onnxruntime)"


def export_onnx(ckpt_path: str | Path, out_path: str | Path, trust: tuple[str, ...] | list[str] = ()) -> dict:
    """Write the backbone of ``ckpt_path`` as ONNX to ``out_path`` (a folder: ``backbone.onnx``
    in it) and ``out_path + ".json"``; return the sidecar, with the max abs differences
    from torch at several batch sizes. Raises ``ConvsslError`` (nothing left behind) when
    the packages are missing, the export fails or the check does not pass."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConvsslError(f"ONNX export needs the {exc.name} package: {_HINT}") from exc
    module, info = load_deployable(ckpt_path, trust)
    out_path = resolve_out(out_path, "backbone.onnx")
    names = output_names(module.encoder)
    batch = torch.export.Dim("batch", min=1, max=65536)
    checked = {}

    def write(tmp: Path) -> None:  # the file is renamed into place only once it passed the check
        try:
            program = torch.onnx.export(module, (example_input(info, 2),), dynamo=True, input_names=["image"],
                                        output_names=names, dynamic_shapes=({0: batch},), optimize=True,
                                        verbose=False)
        except Exception as exc:  # the exporter's own errors carry many types
            raise ConvsslError(f"ONNX export of {module.encoder.config.spec if module.encoder.config else 'the encoder'} "
                               f"failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                               "try --format torchscript") from exc
        program.save(str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        checked["diffs"] = max_abs_differences(module, lambda x: session.run(None, {"image": x.numpy()}), info)
        checked["opset"] = next((o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")),
                                None)

    write_atomic(out_path, write)
    return write_sidecar(out_path, "onnx", module, info, checked["diffs"],
                         {"opset": checked["opset"], "checked_with": f"onnxruntime {onnxruntime.__version__} (CPU)"})
