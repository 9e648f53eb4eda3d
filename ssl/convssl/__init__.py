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
    """The validated ``Recipe`` at ``path`` (a YAML file) with ``overrides`` applied.

    ``overrides`` are ``key=value`` strings, parsed as YAML as ``--set`` parses them
    (``["optim.lr_per_256=0.2", "data.size=48"]``), or a mapping of dotted keys to values
    used as given (``{"train.max_steps": 30}``); both spellings give equal recipes.

    The recipe has five sections: ``encoder``, ``data``, ``task`` (the task's name, its
    class and its own typed Config), ``optim`` and ``train``. Every key of every section is
    checked here, before anything runs: an unknown key, a wrong type or a value outside its
    range raises ``convssl.errors.ConfigError`` naming the key path (and the closest valid
    key). Example::

        recipe = convssl.load_recipe("recipes/quickstart_rotation.yaml", {"train.max_steps": 30})
        recipe.data.batch_size, recipe.task.name     # 64, 'rotation'
    """
    from convssl.recipe import load_recipe as _load

    return _load(path, overrides)


def build_encoder(config, **overrides):
    """An ``Encoder``: the convnet ``config`` names, unchanged, seen as a list of stages.

    ``config`` is an ``EncoderConfig`` or a spec string: ``torchvision:NAME``, ``timm:NAME``
    (with the ``timm`` extra) or ``package.module:callable`` (your own ``nn.Module``
    factory); ``overrides`` are ``EncoderConfig`` fields (``in_chans=1``,
    ``small_input=True``, ``input_size=32``, ``stages=("layer2", "layer4")``). Stages are
    found from one dummy forward at ``input_size``, unless named. The weights are random
    (starting weights, ``encoder.init``, are loaded where a run starts).

    The encoder's ``forward(x)`` returns every stage's map and ``pool(x)`` the pooled last
    stage; ``stages``, ``channels`` and ``reductions`` describe them. ``encoder.model`` is
    the network itself with its original ``state_dict`` keys (its classifier head replaced
    by ``nn.Identity``). A spec that cannot be built, or an input size the network cannot
    take, raises ``convssl.errors.EncoderError``. Example::

        encoder = convssl.build_encoder("torchvision:resnet18", in_chans=1, small_input=True, input_size=32)
        encoder.channels, encoder.reductions          # [64, 128, 256, 512], [1, 2, 4, 8]
    """
    from convssl.encoders import build_encoder as _build

    return _build(config, **overrides)


def pretrain(recipe, data, out, *, monitor=None, callbacks=(), **kwargs) -> dict:
    """Pretrain ``recipe`` (a ``Recipe`` or a YAML path) on shards ``data`` into run folder
    ``out``; keyword arguments as ``convssl.train.trainer.pretrain`` (``resume``, ``device``,
    ``progress``, ``stop_after``, ``callbacks``). ``monitor`` (labeled shards): the online
    probe, kNN and collapse check every ``train.monitor_every`` steps, as ``--monitor``.
    Returns the run summary, ``checkpoint`` included (and ``monitor``, its last verdict)."""
    from convssl.eval.monitor import monitor_callbacks
    from convssl.train.trainer import pretrain as _pretrain

    if not hasattr(recipe, "task"):
        recipe = load_recipe(recipe)
    callbacks = [callbacks] if hasattr(callbacks, "on_step") else list(callbacks)
    return _pretrain(recipe, data, out, callbacks=callbacks + monitor_callbacks(monitor, recipe), **kwargs)


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
    """Write the backbone of ``checkpoint`` (a file or a run folder) to ``out``; returns the sidecar.

    ``format``: ``torchvision`` or ``timm`` (the original model's keys, verified by a
    strict ``load_state_dict`` into that architecture), ``state_dict`` (any encoder, user
    models included) or ``None`` (the encoder's own source). ``safetensors`` writes
    ``.safetensors`` instead of ``.pth``; a folder ``out`` gets ``backbone.pth`` in it.
    (Deployment files, ONNX and TorchScript, come from ``convssl export --format
    onnx|torchscript``: ``convssl.exports.export_onnx`` and ``export_torchscript``.) The sidecar (``out + ".json"``) records the encoder spec, stages, input size,
    normalisation, the recipe and the starting weights. ``trust``: the user-code encoder
    specs (``package.module:callable``) you allow the checkpoint to name; any other is
    refused before anything is imported. A checkpoint with non-finite weights, or weights
    that do not load, raises a ``convssl.errors.ConvsslError`` and writes nothing.
    """
    from convssl.exports import export_backbone

    return export_backbone(checkpoint, out, fmt=format, safetensors=safetensors, trust=trust)
