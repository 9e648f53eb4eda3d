"""Fine-tuning: a pretrained encoder and a fresh linear head trained on a label subset,
by the same training loop as pretraining (``convssl.train.loop``).

Modules: ``config`` (the fine-tuning recipe: pretraining's ``optim`` and ``train``
sections plus the labeled ``data``, the classifier ``task`` and ``eval``), ``classifier``
(the classifier task), ``evaluation`` (validation top-1, and its training-loop callback),
``run`` (``finetune``: the run set up around the loop), ``report`` (report.json/md,
comparison.md, label_seeds.md). It sits beside ``eval`` (whose label subsets, layer-wise
lr decay and intervals it uses) above ``train``.
"""

from __future__ import annotations


def finetune(*args, **kwargs) -> dict:
    """``convssl.finetune.run.finetune`` (imported on use)."""
    from convssl.finetune.run import finetune as _finetune

    return _finetune(*args, **kwargs)
