"""The provenance a run records: convssl, torch and torchvision versions and the git
revision of the source tree, one dict for pretraining, fine-tuning and exports."""

from __future__ import annotations

import subprocess
from pathlib import Path


def versions() -> dict:
    """``{"convssl", "torch", "torchvision", "git"}``; ``git`` is None outside a checkout."""
    import torch
    import torchvision

    from convssl.version import __version__

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"convssl": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "git": rev}
