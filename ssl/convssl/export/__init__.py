"""Export a pretrained backbone for torchvision / timm / plain PyTorch, verified by loading."""

from convssl.export.backbone import FORMATS, ExportError, export_backbone, verify_backbone

__all__ = ["FORMATS", "ExportError", "export_backbone", "verify_backbone"]
