"""Evaluation of frozen encoders: per-stage features, linear probe (primary), kNN.

Modules: ``features`` (frozen, pooled features of every stage), ``linear`` (L-BFGS
logistic regression, weight decay chosen on a held-out split), ``knn`` (weighted
cosine kNN), ``report`` (report.json / report.md / stages.png), ``probe`` (all of it
for a pair of labeled shard sets, with ``baselines`` probed the same way), ``bootstrap``
(95% intervals and paired differences over held-out images), ``correctness`` (per-image
correctness stored as bits, for pairing reports later), ``verdict`` (pays / no gain
measurable / hurts), ``baselines`` (random init, weights:PATH), ``label_subset`` and
``layer_decay`` (for fine-tuning, ``convssl.finetune``), ``monitor`` (the online probe, kNN
and collapse check during pretraining, a training-loop callback), ``embed`` (a 2-D map of
the features).
Imported on use.
"""
