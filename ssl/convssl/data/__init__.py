"""Shard writing and reading: image sources -> webdataset tar shards -> batches.

Modules (imported on use, so ``import convssl.data`` pulls in nothing heavy):
``idx`` (MNIST-style IDX files), ``sources`` (folders, ImageFolder trees, IDX
datasets), ``manifest`` (``manifest.json`` beside the shards), ``writer``
(``write_shards``, on webdataset's ``ShardWriter``), ``urls`` (``resolve_shards``:
local, ``pipe:``, http(s), object-store specs), ``tar_stream`` (one shard URL ->
samples, through webdataset), ``reader`` (``ShardDataset``, ``make_loader``), ``config``
(the recipe's ``data`` section). What is cut from each image lives in ``convssl.views``.
"""
