"""Shard writing and reading: image sources -> webdataset tar shards -> batches.

Modules (imported on use, so ``import convssl.data`` pulls in nothing heavy):
``idx`` (MNIST-style IDX files), ``sources`` (folders, ImageFolder trees, IDX
datasets), ``manifest`` (``manifest.json`` beside the shards), ``writer``
(``write_shards``), ``urls`` (``resolve_shards``), ``reader`` (``ShardDataset``,
``make_loader``), ``crops`` (random resized / center crops), ``normalize``.
"""
