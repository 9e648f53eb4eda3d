"""Views: what a task cuts from each image, in the loader's workers or on the device.

Sample transforms ``(img_uint8_CHW, torch.Generator) -> dict`` run in the loader's
workers and draw every random choice from the sample's own generator, so a sample's
views are fixed by (seed, epoch, position) and a resumed run reproduces them:
``crops`` (random resized and centre crops), ``crop_views`` (several crops of one image,
``CropViews``; ``Named`` for evaluation), ``multicrop`` (global and local crops of two
sizes, SwAV/DINO), ``grid`` (a 3x3 grid of jittered patches),
``context_patches`` (context prediction's centre and neighbours), ``jigsaw_tiles``
(shuffled tiles), ``patch_shortcuts`` (the patch tasks' countermeasures).
Photometric augmentation: ``photometric`` (batched on the device, or one view at a time
in the workers), ``photometric_config`` (its strengths), ``view_augment`` (where it runs
and the view's preparation); ``normalize`` turns uint8 into the encoder's float input.

Modules are imported on use: ``import convssl.views`` pulls in nothing heavy.
"""
