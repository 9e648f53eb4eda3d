"""Export a pretrained backbone: weights for torchvision / timm / plain PyTorch, verified by
loading; or a deployment file (ONNX, TorchScript), verified against torch's outputs."""

from convssl.exports.backbone import FORMATS, ExportError, export_backbone, verify_backbone
from convssl.exports.onnx import export_onnx
from convssl.exports.torchscript import export_torchscript

DEPLOY_FORMATS = ("onnx", "torchscript")

__all__ = ["DEPLOY_FORMATS", "FORMATS", "ExportError", "export_backbone", "export_onnx", "export_torchscript",
           "verify_backbone"]
