"""Shard writing and reading: image sources -> webdataset tar shards -> batches.

Modules (imported on use, so ``import convssl.data`` pulls in nothing heavy):
``idx`` (MNIST-style IDX files), ``sources`` (folders, ImageFolder trees, IDX
datasets), ``manifest`` (``manifest.json`` beside the shards), ``writer``
(``write_shards``, on webdataset's ``ShardWriter``), ``urls`` (``resolve_shards``:
local, ``pipe:``, http(s), object-store specs), ``tar_stream`` (one shard URL ->
samples, through webdataset), ``config`` (the recipe's ``data`` section). Reading:
``shard_dataset`` (``ShardDataset``: the per-unit pipeline), ``unit_split`` (which shard
pieces each rank and worker reads), ``retrying_reader`` (remote shards re-opened, then
skipped), ``sample_decode`` (bytes -> image and class), ``corrupt_samples`` (counted,
replaced in place, an error past a threshold), ``read_stats`` (counters in shared
memory), ``read_error``, ``collate`` (``collate_samples``) and ``loader``
(``make_loader``). What is cut from each image lives in ``convssl.views``.
"""
