"""Task names -> pretext task classes, and a recipe's task section -> a checked ``TaskSpec``.

A recipe's ``task.name`` is, looked up in this order:
- a built-in name: one line per task below, imported on use (``import convssl`` needs
  neither spconv nor timm);
- ``package.module:Class``: a task class in the user's own code, imported from ``sys.path``;
- an entry point of the ``convssl.tasks`` group: a package's way to give its tasks names
  (``[project.entry-points."convssl.tasks"] mytask = "mypkg.tasks:MyTask"``).
Every class, built in or not, is checked against the same task contract
(``convssl.tasks.check_task``) before it is used.

The section is parsed once, here (``TaskSpec.from_section``, which ``from_dict`` calls for
a ``TaskSpec`` field): the task's own typed Config, checked like any other section;
``build_task`` only constructs from the spec.

Only pretraining builds a task. The evaluation commands (probe, export, embed, finetune)
rebuild the encoder alone from a checkpoint (``convssl.encoders.from_checkpoint.encoder_config``, under
``--trust-encoder``) and never resolve a task name, so a task from outside the package
does not widen what loading a checkpoint may import or run.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

from convssl.config import did_you_mean, from_dict
from convssl.errors import ConfigError
from convssl.tasks import check_task

TASKS: dict[str, str] = {
    "rotation": "convssl.tasks.rotation:RotationPrediction",
    "spark": "convssl.tasks.spark:SparK",
    "simclr": "convssl.tasks.simclr:SimCLR",
    "moco": "convssl.tasks.moco:MoCo",
    "multi": "convssl.tasks.multi:MultiTask",
    "context": "convssl.tasks.context:ContextPrediction",
    "jigsaw": "convssl.tasks.jigsaw:Jigsaw",
    "byol": "convssl.tasks.byol:BYOL",
    "barlow_twins": "convssl.tasks.barlow_twins:BarlowTwins",
    "vicreg": "convssl.tasks.vicreg:VICReg",
    "dino": "convssl.tasks.dino:DINO",
}
ENTRY_POINT_GROUP = "convssl.tasks"


def plugin_tasks() -> dict[str, str]:
    """The ``convssl.tasks`` entry points of the installed distributions: name -> target.
    A name registered by two distributions is an error (neither can be chosen silently)."""
    found: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name] != ep.value:
            raise ConfigError(f"task {ep.name!r} is registered twice in the {ENTRY_POINT_GROUP!r} entry points "
                              f"({found[ep.name]} and {ep.value}); uninstall one, or name the class as "
                              f"task.name: package.module:Class")
        found[ep.name] = ep.value
    return found


def available_tasks() -> list[str]:
    """Every name ``task.name`` takes: the built-ins, then the installed entry points."""
    return sorted(TASKS) + sorted(set(plugin_tasks()) - set(TASKS))


def task_class(name: str) -> type:
    """The task class ``name`` stands for, checked against the task contract."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"task.name must be a task name or package.module:Class, got {name!r}")
    # Pretraining alone resolves names: evaluation commands read encoders from checkpoints
    # (trust rules in convssl.encoders.from_checkpoint) and never import a task, built in or not.
    if name in TASKS:  # built-ins first: an installed package cannot change what a built-in name means
        target = TASKS[name]
    elif ":" in name:
        target = name
    else:
        plugins = plugin_tasks()
        if name not in plugins:
            names = available_tasks()
            raise ConfigError(f"unknown task {name!r}{did_you_mean(name, names)}; available tasks: "
                              f"{', '.join(names)}; or a class of your own as package.module:Class")
        target = plugins[name]
    cls = _import_class(target, name)
    check_task(cls, name)
    return cls


def _import_class(target: str, name: str) -> Any:
    module_path, _, attr = target.partition(":")
    if not module_path or not attr or ":" in attr:
        raise ConfigError(f"task {name!r}: {target!r} is not of the form package.module:Class")
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ConfigError(f"task {name!r}: cannot import module {module_path!r} ({exc}); "
                          "is its package installed or on PYTHONPATH?") from exc
    if not hasattr(module, attr):
        public = [a for a in vars(module) if not a.startswith("_")]
        raise ConfigError(f"task {name!r}: module {module_path!r} has no attribute {attr!r}"
                          f"{did_you_mean(attr, public)}")
    return getattr(module, attr)


@dataclass(frozen=True)
class TaskSpec:
    """A recipe's task section, parsed: the task's name, its class (contract-checked) and
    its own typed Config. ``section`` is the section as written (without ``name``): it is
    what config.yaml and checkpoints record, so a run's config reads back as it was given."""

    name: str
    cls: type
    config: Any
    section: dict

    @classmethod
    def from_section(cls, section, path: str = "task") -> TaskSpec:
        """Parse ``{name: ..., <the task's keys>}``: unknown keys and wrong types fail here."""
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: expected a task section such as {{name: rotation}}, got {section!r}")
        keys = dict(section)
        name = keys.pop("name", None)
        if name is None:
            raise ConfigError(f"{path}.name is missing (e.g. {{name: rotation}}); "
                              f"available tasks: {', '.join(available_tasks())}")
        task = task_class(name)
        return cls(name=name, cls=task, config=from_dict(task.Config, keys, path=path), section=keys)

    def to_section(self) -> dict:
        return {"name": self.name, **copy.deepcopy(self.section)}


def build_task(spec: TaskSpec, encoder, data_cfg):
    """The task ``spec`` describes, over ``encoder``, for data ``data_cfg``."""
    return spec.cls(encoder, spec.config, data_cfg)
