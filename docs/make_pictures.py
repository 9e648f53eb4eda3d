"""Draw the documentation's pictures with convssl's own code, into docs/img/.

- ``spark_reconstruction.png``: the grid SparK's ``pictures()`` writes during training
  (input / masked input / reconstruction / reconstruction with the visible patches),
  after a short SparK run on the embedded Fashion-MNIST sample (``convssl.pretrain``).
- ``context_patches.png`` and ``jigsaw_tiles.png``: what the loader's workers cut from
  one image for context prediction and jigsaw (the tasks' own ``loader_transform``).

Run from the repository root (a few minutes on 2 CPU cores)::

    python docs/make_pictures.py            # all three
    python docs/make_pictures.py --only layouts
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
DATA = ROOT / "data" / "fmnist"


def sample_images(count: int) -> list[torch.Tensor]:
    """The first ``count`` images of the embedded sample, as uint8 [1, 28, 28]."""
    from convssl.data.shard_dataset import ShardDataset

    images = []
    for sample in ShardDataset(str(DATA / "train"), channels=1):
        images.append(sample["img"])
        if len(images) == count:
            break
    return images


def task_for(recipe_path: str, overrides: dict):
    """The task a recipe builds (random-init encoder), as the trainer builds it."""
    import convssl
    from convssl.tasks.registry import build_task

    recipe = convssl.load_recipe(ROOT / recipe_path, overrides)
    encoder = convssl.build_encoder(recipe.encoder)
    return build_task(recipe.task, encoder, recipe.data), recipe


def to_pil(img_CHW: torch.Tensor, scale: int) -> Image.Image:
    img = img_CHW.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy()
    pil = Image.fromarray(img, "RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def layout_picture(images: list[torch.Tensor], labels: list[str], caption: str, scale: int = 3) -> Image.Image:
    """Images side by side with a label under each and a caption line on top."""
    tiles = [to_pil(img, scale) for img in images]
    pad, text_h = 8, 14
    caption_w = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(caption)) + 2 * pad
    width = max(sum(t.width for t in tiles) + pad * (len(tiles) + 1), caption_w)
    height = max(t.height for t in tiles) + 2 * text_h + 3 * pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad // 2), caption, fill="black")
    x = pad
    for tile, label in zip(tiles, labels):
        canvas.paste(tile, (x, text_h + pad))
        draw.text((x, text_h + 2 * pad + tile.height - 4), label, fill="black")
        x += tile.width + pad
    return canvas


def grid_of(patches: list[torch.Tensor], slots: list[int], side: int = 3, gap: int = 2) -> torch.Tensor:
    """Patches [C, P, P] placed in a side x side grid at ``slots`` (reading order), grey elsewhere."""
    c, p = patches[0].shape[0], patches[0].shape[-1]
    out = torch.full((c, side * p + (side - 1) * gap, side * p + (side - 1) * gap), 200, dtype=torch.uint8)
    for patch, slot in zip(patches, slots):
        r, q = divmod(slot, side)
        out[:, r * (p + gap):r * (p + gap) + p, q * (p + gap):q * (p + gap) + p] = patch
    return out


def context_and_jigsaw(image: torch.Tensor) -> None:
    """The two patch layouts, from the tasks' own worker transforms on one image."""
    from convssl.views.context_patches import NEIGHBOURS

    task, recipe = task_for("recipes/context_resnet18_small.yaml", {"task.pairs": 8})
    views = task.loader_transform()(image, torch.Generator().manual_seed(3))
    patches, labels = views["patches"], views["label"]
    slots = [4] + [NEIGHBOURS[int(k)] for k in labels]
    grid = grid_of(list(patches), slots)
    layout_picture([image, grid], ["image", f"centre + {len(labels)} neighbours"],
                   f"context prediction: {patches.shape[-1]} px patches of a {recipe.data.size} px crop; "
                   "predict each neighbour's position (0-7) from (centre, neighbour)", scale=4
                   ).save(IMG / "context_patches.png", optimize=True)

    task, recipe = task_for("recipes/jigsaw_resnet18_small.yaml", {"task.tile_norm": False})
    views = task.loader_transform()(image, torch.Generator().manual_seed(3))
    tiles, perm_index = views["tiles"], int(views["label"])
    order = task.permutations[perm_index].tolist()
    restored = [None] * len(order)
    for slot, source in enumerate(order):
        restored[source] = tiles[slot]
    shuffled = grid_of(list(tiles), list(range(len(order))))
    in_place = grid_of(restored, list(range(len(order))))
    layout_picture([image, in_place, shuffled], ["image", "tiles in place", f"shuffled: class {perm_index}"],
                   f"jigsaw: 9 tiles of {tiles.shape[-1]} px, shuffled by one of {task.permutations.shape[0]} "
                   "permutations; predict which", scale=4).save(IMG / "jigsaw_tiles.png", optimize=True)


def spark_reconstruction(steps: int) -> None:
    """A short SparK run; its last picture grid (``train.image_every``) becomes the PNG."""
    import convssl

    overrides = {"train.max_steps": steps, "data.batch_size": 32, "data.workers": 1, "optim.lr_per_256": 2e-3,
                 "optim.warmup_epochs": 0.05, "task.backend": "masked", "task.decoder_width": 256,
                 "train.image_every": steps, "train.ckpt_every": 0, "train.log_every": 25}
    recipe = convssl.load_recipe(ROOT / "recipes/spark_resnet18_small.yaml", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        convssl.pretrain(recipe, str(DATA / "unlabeled"), Path(tmp) / "run", device="cpu")
        pictures = sorted((Path(tmp) / "run" / "images").glob("*.png"))
        if not pictures:
            sys.exit("the SparK run wrote no picture (train.image_every)")
        grid = Image.open(pictures[-1]).convert("RGB")
        grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST).save(IMG / "spark_reconstruction.png", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["layouts", "spark"], default=None, help="draw only these pictures")
    parser.add_argument("--spark-steps", type=int, default=100, help="SparK steps before the picture")
    args = parser.parse_args()
    IMG.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.only in (None, "layouts"):
        context_and_jigsaw(sample_images(4)[3])
    if args.only in (None, "spark"):
        spark_reconstruction(args.spark_steps)


if __name__ == "__main__":
    main()
