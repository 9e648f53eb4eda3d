"""Recipe names -> pretext task classes, imported lazily on use.

One line per task. A task module is imported only when a recipe names it, so
``import convssl`` needs neither spconv nor timm.
"""

from __future__ import annotations

import importlib

from convssl.config import did_you_mean, from_dict
from convssl.errors import ConfigError
from convssl.tasks import check_task

TASKS: dict[str, str] = {
    "rotation": "convssl.tasks.rotation:RotationPrediction",
    "spark": "convssl.tasks.spark:SparK",
    "simclr": "convssl.tasks.simclr:SimCLR",
    "moco": "convssl.tasks.moco:MoCo",
}


def task_class(name: str) -> type:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}{did_you_mean(name, TASKS)}; "
                          f"available tasks: {', '.join(sorted(TASKS))}")
    module_path, attr = TASKS[name].split(":")
    cls = getattr(importlib.import_module(module_path), attr)
    check_task(cls, name)
    return cls


def build_task(task_section: dict, encoder, data_cfg):
    """Build the task named by ``task_section['name']`` with the rest as its typed Config."""
    section = dict(task_section or {})
    name = section.pop("name", None)
    if name is None:
        raise ConfigError(f"task.name is missing; one of: {', '.join(sorted(TASKS))}")
    cls = task_class(name)
    cfg = from_dict(cls.Config, section, path="task")
    return cls(encoder, cfg, data_cfg)
