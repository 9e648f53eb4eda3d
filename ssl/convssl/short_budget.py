"""Optimizer settings for runs that a wall-clock budget makes short (``optim.short_budget``).

A recipe tuned for hundreds of epochs (LARS, ten warm-up epochs, the paper's learning
rate) can leave a run of a fraction of an epoch worse than no pretraining: the warm-up
alone outlasts the run. A recipe may therefore name the optimizer settings it wants when
``--budget`` decides a run shorter than ``below_epochs`` epochs::

    optim:
      name: lars
      lr_per_256: 0.4
      warmup_epochs: 10
      short_budget:            # used instead when --budget leaves < 10 epochs
        below_epochs: 10
        name: sgd
        lr_per_256: 0.06
        warmup_fraction: 0.02  # warm-up as a fraction of the decided run (-> warmup_epochs)

Any ``optim`` key may appear; ``warmup_fraction`` sets ``warmup_epochs`` to that
fraction of the decided run. The replacement happens once, after the budget's timed steps
(which are undone), so the run equals a run started with those settings; the budget record
in ``config.yaml`` and the checkpoint says it happened and for how many epochs, and
``--resume`` applies the same settings again.
"""

from __future__ import annotations

from dataclasses import fields, replace

from convssl.errors import ConfigError

CONTROL_KEYS = ("below_epochs", "warmup_fraction")


def check(optim) -> None:
    """A one-line ``ConfigError`` for a malformed ``optim.short_budget`` (run at recipe load)."""
    section = dict(optim.short_budget or {})
    if not section:
        return
    valid = sorted({f.name for f in fields(optim)} - {"short_budget"} | set(CONTROL_KEYS))
    unknown = sorted(set(section) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) optim.short_budget.{', optim.short_budget.'.join(unknown)}; "
                          f"valid keys: {', '.join(valid)}")
    below = section.get("below_epochs")
    if not isinstance(below, (int, float)) or isinstance(below, bool) or below <= 0:
        raise ConfigError(f"optim.short_budget.below_epochs must be a number > 0 (got {below!r}): the run length, "
                          "in epochs, under which these settings replace the recipe's")
    fraction = section.get("warmup_fraction", 0.0)
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction < 1:
        raise ConfigError(f"optim.short_budget.warmup_fraction must be in [0, 1) (got {fraction!r})")
    if "warmup_fraction" in section and "warmup_epochs" in section:
        raise ConfigError("optim.short_budget gives both warmup_fraction and warmup_epochs: keep one")
    _settings(optim, run_epochs=1.0)  # the replacement settings pass OptimConfig's own checks


def applies(optim, run_epochs: float) -> bool:
    """Whether a run of ``run_epochs`` epochs takes the ``short_budget`` settings."""
    section = optim.short_budget or {}
    return bool(section) and run_epochs < float(section["below_epochs"])


def short_optim(optim, run_epochs: float):
    """``optim`` with the ``short_budget`` settings in place, for a run of ``run_epochs`` epochs
    (the section itself is kept, so the recorded recipe still says where they came from)."""
    return replace(_settings(optim, run_epochs), short_budget=dict(optim.short_budget))


def _settings(optim, run_epochs: float):
    """The replacement settings as an ``OptimConfig`` without a ``short_budget`` of its own."""
    from convssl.config import from_dict

    section = {k: v for k, v in (optim.short_budget or {}).items() if k not in CONTROL_KEYS}
    if "warmup_fraction" in (optim.short_budget or {}):
        section["warmup_epochs"] = float(optim.short_budget["warmup_fraction"]) * run_epochs
    values = from_dict(type(optim), section, path="optim.short_budget")  # coerced and range-checked
    return replace(optim, short_budget={}, **{k: getattr(values, k) for k in section})
