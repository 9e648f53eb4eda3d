"""convssl: self-supervised pretraining toolkit for convolutional networks.

The public API, the same steps as the CLI::

    import convssl

    recipe = convssl.load_recipe("recipes/quickstart_rotation.yaml", {"train.max_steps": 30})
    run = convssl.pretrain(recipe, "data/fmnist/unlabeled", "runs/rot")
    report = convssl.probe(run["checkpoint"], "data/fmnist/train", "data/fmnist/test", "runs/rot/probe",
                           baselines=["random"])          # report["verdicts"]: does it pay?
    sidecar = convssl.export(run["checkpoint"], "runs/rot/resnet18.pth")
    encoder = convssl.build_encoder("torchvision:resnet50")   # any convnet, as stages

Importing the package is cheap: it pulls in no optional dependency (timm, spconv), no
torch, and touches no GPU; each function imports what it needs on first use.
"""

from __future__ import annotations

from convssl.version import __version__
__all__ = ["load_recipe", "build_encoder", "pretrain", "probe", "export", "__version__"]


def load_recipe(path, overrides=()):
    """A validated ``Recipe`` from a YAML file plus overrides, given as ``key=value`` strings
    (as ``--set`` takes them) or as a dict ``{"optim.lr_per_256": 0.1}``."""
    from convssl.recipe import load_recipe as _load

    return _load(path, overrides)


def build_encoder(config, **overrides):
    """An ``Encoder`` (the convnet seen as stages) from an ``EncoderConfig`` or a spec string
    (``torchvision:NAME``, ``timm:NAME``, ``package.module:callable``) plus config fields."""
    from convssl.encoders import build_encoder as _build

    return _build(config, **overrides)


def pretrain(recipe, data, out, **kwargs) -> dict:
    """Pretrain ``recipe`` (a ``Recipe`` or a YAML path) on shards ``data`` into run folder
    ``out``; keyword arguments as ``convssl.train.trainer.pretrain`` (``resume``, ``device``,
    ``progress``, ``stop_after``). Returns the run summary, ``checkpoint`` included."""
    from convssl.train.trainer import pretrain as _pretrain

    if not hasattr(recipe, "task"):
        recipe = load_recipe(recipe)
    return _pretrain(recipe, data, out, **kwargs)


def probe(checkpoint, train, val, out, baselines=(), **kwargs) -> dict:
    """Linear-probe and kNN-evaluate the frozen encoder of ``checkpoint`` (a file or a run
    folder) on labeled shards, with the input size, channels and normalisation of its recipe;
    keyword arguments as ``convssl.eval.probe.probe``. Writes report.json/md and stages.png
    into ``out`` and returns the report: every top-1 with its 95% bootstrap interval
    (``stages[i]["linear_ci"]``, ...). ``baselines``: ``"random"``, ``"random:SEED"`` or
    ``"weights:PATH"``, each probed the same way on the same images; the report's
    ``baselines`` then hold their results and the paired differences per stage, and
    ``verdicts`` one line per stage and baseline ("layer3: pays, +2.1 [+1.4, +2.8] over random init")."""
    from convssl.eval.probe import probe_checkpoint

    return probe_checkpoint(checkpoint, train, val, out, baselines=baselines, **kwargs)


def export(checkpoint, out, format: str | None = "torchvision", safetensors: bool = False, trust=()) -> dict:
    """Write the backbone of ``checkpoint`` in the original model's key space (verified by a
    strict load) plus a JSON sidecar; returns the sidecar. ``trust``: the user-code encoder
    specs (``package.module:callable``) you allow the checkpoint to name; any other is refused."""
    from convssl.exports import export_backbone

    return export_backbone(checkpoint, out, fmt=format, safetensors=safetensors, trust=trust)
