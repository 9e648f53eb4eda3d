"""Starting weights for an encoder (``encoder.init``): continued, domain-adaptive pretraining.

``encoder.init`` names weights under the original model's keys:

- a weight file: ``.pt``/``.pth`` (``torch.load(weights_only=True)``: no code in it runs) or
  ``.safetensors``; a torchvision or timm download, a ``convssl export``, a plain
  ``torch.save(model.state_dict())``;
- a convssl checkpoint, a file or a run directory (its latest): its ``encoder`` entry;
- ``torchvision:<WEIGHTS>`` (``torchvision:ResNet18_Weights.IMAGENET1K_V1``) from the local
  torch hub cache, ``torch.hub.get_dir()/checkpoints``;
- ``timm:pretrained``: the timm encoder's default pretrained weights from the local
  Hugging Face or torch hub cache.

Nothing is ever downloaded (machines without network would hang): a file not in its cache
is one line naming the file to place and where. The original classifier head's keys
(``Encoder.head``) are dropped; any other missing or unexpected key is an error naming the
keys. A first convolution with other input channels is adapted as timm's
``adapt_input_conv`` does (``timm/models/_manipulate.py``); other shapes are an error.

``build_encoder`` always builds random weights (a checkpoint's encoder is rebuilt and then
loaded, on machines that may not hold the starting weights); ``apply_init`` is called where
a run starts: ``convssl pretrain`` on a fresh start.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from convssl.errors import ConfigError, ConvsslError

FORMS = ("a .pt/.pth/.safetensors state dict", "a convssl checkpoint or run directory",
         "torchvision:<WEIGHTS> (e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1)", "timm:pretrained")


@dataclass(frozen=True)
class InitWeights:
    """Weights read for ``encoder.init``: the value, the file read, its sha256, the tensors."""

    source: str
    path: str
    sha256: str
    tensors: dict


def locate(init: str, spec: str) -> Path:
    """The local file ``init`` names for an encoder of ``spec``; a ``ConfigError`` in one line
    when it is not there (for the caches: which file to place, and where)."""
    if init.startswith("torchvision:"):
        return _torchvision_file(init)
    if init.startswith("timm:"):
        return _timm_file(init, spec)
    path = Path(init).expanduser()
    if not path.exists():
        raise ConfigError(f"encoder.init {init!r} does not exist; give {', '.join(FORMS)}")
    return path


def read_init(init: str, spec: str) -> InitWeights:
    """Read the tensors ``init`` names (see the module docstring) and the sha256 of the file."""
    path = locate(init, spec)
    if path.is_dir():
        from convssl import checkpoint as ckpt_io

        ckpt = ckpt_io.load(path)
        return InitWeights(init, ckpt["path"], _sha256(ckpt["path"]), dict(ckpt["encoder"]))
    return InitWeights(init, str(path), _sha256(path), _read_state_dict(path))


def apply_init(encoder, init: str, note=print) -> dict | None:
    """Load ``init``'s weights into ``encoder`` (in place); return the record checkpoints keep
    (``{"source", "path", "sha256", "adapted"}``), or None when ``init`` is empty.

    ``note`` receives one line when the first convolution's input channels were adapted.
    """
    if not init:
        return None
    weights = read_init(init, encoder.config.spec if encoder.config else "")
    adapted = load_into(encoder, weights.tensors, what=f"encoder.init {init!r}", note=note)
    record = {"source": init, "path": weights.path, "sha256": weights.sha256, "adapted": adapted}
    encoder.init_source = record
    return record


def load_into(encoder, tensors: dict, *, what: str, note=print) -> list[str]:
    """Load ``tensors`` (original model keys) into ``encoder.model``, strictly but for the head.

    Returns the keys whose input channels were adapted (``adapt_input_conv``). Missing
    ``num_batches_tracked`` counters (old torchvision files) keep the encoder's value.
    """
    own = encoder.model.state_dict()
    head = tuple(encoder.head)
    weights = {k: v for k, v in _unprefixed(tensors).items()
               if not any(k == h or k.startswith(f"{h}.") for h in head)}
    unexpected = sorted(k for k in weights if k not in own)
    missing = sorted(k for k in own if k not in weights and not k.endswith("num_batches_tracked"))
    if missing or unexpected:
        parts = [f"missing {len(missing)} key(s): {', '.join(missing[:6])}" if missing else "",
                 f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:6])}" if unexpected else ""]
        raise ConvsslError(f"{what} does not fit {_name(encoder)}: " + "; ".join(p for p in parts if p)
                           + " (keys must be the original model's; the classifier head is dropped)")
    adapted = []
    first = _first_conv_key(encoder)
    for key, value in list(weights.items()):
        target = own[key].shape
        if value.shape == target:
            continue
        if (key == first and value.dim() == 4 and value.shape[0] == target[0]
                and value.shape[2:] == target[2:]):
            weights[key] = adapt_input_conv(value, target[1])
            adapted.append(key)
            note(f"{what}: {key} takes {value.shape[1]} input channel(s) in the file and {target[1]} here; "
                 "adapted as timm's adapt_input_conv does "
                 + ("(summed over the input channels)" if target[1] == 1 else
                    f"(channels repeated, scaled by {value.shape[1]}/{target[1]})"))
            continue
        hint = (" (encoder.small_input makes conv1 a 3x3 convolution: weights of the 7x7 ImageNet stem do not fit)"
                if encoder.config is not None and encoder.config.small_input and key == first else "")
        raise ConvsslError(f"{what} does not fit {_name(encoder)}: {key} has shape {list(value.shape)} in the file "
                           f"and {list(target)} in the encoder{hint}")
    for key in own:
        weights.setdefault(key, own[key])  # the num_batches_tracked counters a file may lack
    encoder.model.load_state_dict(weights, strict=True)
    return adapted


def adapt_input_conv(weight_OIJK: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first convolution's weight ``[O, I, kh, kw]`` for ``in_chans`` input channels, by
    the rule of timm's ``adapt_input_conv`` (``timm/models/_manipulate.py``), with the file's
    ``I`` as timm's ``base_chans``: one channel sums the ``I`` input channels (a gray image
    seen as I equal channels gives the same response); more channels repeat the ``I``
    channels cyclically, cut to ``in_chans``, and scale by ``I / in_chans`` so the response to
    equal channels keeps its size. Computed in float32, returned in the weight's dtype."""
    _, base, _, _ = weight_OIJK.shape
    if in_chans == base:
        return weight_OIJK
    w = weight_OIJK.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        w = w.repeat(1, math.ceil(in_chans / base), 1, 1)[:, :in_chans] * (base / in_chans)
    return w.to(weight_OIJK.dtype)


# ---- sources -------------------------------------------------------------------------------
def _torchvision_file(init: str) -> Path:
    name = init.split(":", 1)[1]
    try:
        from torchvision.models import get_weight
    except Exception as exc:  # not installed, or a build that does not import (see ENVIRONMENT)
        raise ConfigError(f"encoder.init {init!r} needs torchvision, which does not import here "
                          f"({type(exc).__name__}); give the weight file's path instead") from None
    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"encoder.init {init!r}: torchvision has no weights {name!r} ({type(exc).__name__}); "
                          "write the enum and member, e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1") from None
    file = os.path.basename(urlparse(weights.url).path)
    path = Path(torch.hub.get_dir()) / "checkpoints" / file
    if not path.is_file():
        raise ConfigError(f"encoder.init {init!r}: {path} is not there and convssl never downloads; place {file} "
                          f"(from {weights.url}) at {path}, or give its path as encoder.init")
    return path


def _timm_file(init: str, spec: str) -> Path:
    if init != "timm:pretrained":
        raise ConfigError(f"encoder.init {init!r}: the timm form is timm:pretrained (the timm encoder's default "
                          "weights); for other weights give the file's path")
    if not spec.startswith("timm:"):
        raise ConfigError(f"encoder.init timm:pretrained needs a timm encoder (encoder.spec timm:NAME), not {spec!r}")
    try:
        from timm.models import get_pretrained_cfg
    except ImportError as exc:
        raise ConfigError("encoder.init timm:pretrained needs timm: pip install 'convssl[timm]'") from exc
    model = spec.split(":", 1)[1]
    cfg = get_pretrained_cfg(model)
    if cfg is None:
        raise ConfigError(f"encoder.init timm:pretrained: timm has no pretrained weights for {model!r}")
    where = []
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import try_to_load_from_cache  # a cache lookup: no network
        from huggingface_hub.constants import HF_HUB_CACHE

        repo = cfg.hf_hub_id.split("@")[0]
        for file in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, file)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        where.append(f"model.safetensors of https://huggingface.co/{repo} in the Hugging Face cache {HF_HUB_CACHE} "
                     f"(huggingface-cli download {repo} model.safetensors, on a machine with network)")
    if getattr(cfg, "url", None):
        file = os.path.basename(urlparse(cfg.url).path)
        path = Path(torch.hub.get_dir()) / "checkpoints" / file
        if path.is_file():
            return path
        where.append(f"{file} (from {cfg.url}) at {path}")
    raise ConfigError(f"encoder.init timm:pretrained: the weights of {model!r} are not in the local cache and "
                      f"convssl never downloads; place {' or '.join(where) or 'them'}, or give the file's path as "
                      "encoder.init")


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ConvsslError(f"{str(path)!r} is a .safetensors file: pip install safetensors "
                               "(or pip install 'convssl[safetensors]')") from exc
        try:
            return load_file(str(path))
        except Exception as exc:
            raise ConvsslError(f"cannot read {str(path)!r} as safetensors ({type(exc).__name__}: {exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConvsslError(f"cannot read the weight file {str(path)!r} ({type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); give "
                           f"{', '.join(FORMS)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("encoder"), dict) and "config" in obj:
        obj = obj["encoder"]  # a convssl checkpoint file: its backbone, under the original keys
    for wrapper in ("state_dict", "model"):  # training checkpoints of other tools
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConvsslError(f"the weight file {str(path)!r} holds no state dict (a mapping of names to tensors)")
    return obj


def _unprefixed(tensors: dict) -> dict:
    """Keys without a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix all share."""
    for prefix in ("module.", "_orig_mod."):
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _first_conv_key(encoder) -> str:
    from convssl.encoders.stem import first_conv

    size = max(encoder.input_size, 32)
    was_training = encoder.model.training
    encoder.model.eval()  # a probe forward in train mode would move BatchNorm's statistics
    try:
        name, _ = first_conv(encoder.model, torch.zeros(1, encoder.in_chans, size, size))
    finally:
        encoder.model.train(was_training)
    return f"{name}.weight"


def _name(encoder) -> str:
    return repr(encoder.config.spec) if encoder.config is not None else type(encoder.model).__name__


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
