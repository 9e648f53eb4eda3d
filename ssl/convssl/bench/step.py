"""``convssl bench step``: a task's real training step against a plain supervised step.

    convssl bench step --recipe recipes/simclr_resnet18_small.yaml [--set KEY=VALUE ...]
        [--device cpu|cuda] [--precision fp32,bf16] [--channels-last on,off] [--compile off,on]

For every variant (the product of the lists given) it builds the task from the recipe
through the registry, feeds it batches cut by the task's own loader transform from
synthetic uint8 images (made before timing, so the figure is the step's, not the
loader's), and times warm-up-free steps as the trainer takes them (the loop's own
``train_step``: autocast forward, backward, gradient clipping, the finiteness check,
optimizer step, ``after_step``). In the same run it times a
plain supervised step (the same encoder config, batch and input size, a linear
classifier on the pooled last stage, cross-entropy, the recipe's optimizer): the
practical ceiling. Both steps' FLOPs are counted once with ``torch.utils.flop_counter``
(matmuls and convolutions, forward and backward), so

- ours/ceiling = (our FLOP/s) / (ceiling FLOP/s): 1.0 means the task's extra work
  (views, heads, losses, masks, momentum updates) costs no more per FLOP than supervised
  training;
- MFU = FLOP/s / the device's matmul rate, measured in the same run on a square
  matmul in the variant's dtype.

Peak memory: CUDA ``max_memory_allocated``; on CPU the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs`` before each measurement).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from convssl.errors import ConfigError

_SPLIT = ("data", "forward", "backward", "optimizer")


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", required=True, action="append",
                        help="a recipe YAML (repeatable: one table row group per recipe)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set data.batch_size=32 (repeatable)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--precision", default="fp32", help="comma list of fp32, bf16 (default fp32)")
    parser.add_argument("--channels-last", default=None,
                        help="comma list of on, off (default: the recipe's train.channels_last)")
    parser.add_argument("--compile", default="off", help="comma list of off, on (default off)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the supervised step")
    parser.add_argument("--out", default=None, help="also write the table (Markdown) to this file")


def run(args) -> int:
    from convssl.recipe import load_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available here")
    variants = list(itertools.product(_choices(args.precision, "--precision", ("fp32", "bf16")),
                                      _choices(args.channels_last, "--channels-last", ("on", "off"), allow_none=True),
                                      _choices(args.compile, "--compile", ("on", "off"))))
    recipes = [(path, load_recipe(path, args.overrides)) for path in args.recipe]  # every recipe checked first
    rows = []
    peaks: dict[str, float] = {}
    for path, recipe in recipes:
        for precision, channels_last, compiled in variants:
            v = Variant(precision=precision, compile=compiled == "on",
                        channels_last=recipe.train.channels_last if channels_last is None else channels_last == "on")
            if precision not in peaks:
                peaks[precision] = matmul_rate(device, _dtype(precision))
            ours = measure(recipe, v, device, steps=args.steps, warmup=args.warmup)
            ceiling = None
            if not args.no_ceiling:
                matched = matched_batch(recipe, device, ours.flops)
                ceiling = measure(recipe, v, device, steps=args.steps, warmup=args.warmup, supervised=matched)
            rows.append(Row(Path(path).stem, recipe.task.name, v, ours, ceiling, peaks[precision]))
            print(rows[-1].progress_line(), flush=True)
    table = format_table(rows, device)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


@dataclass(frozen=True)
class Variant:
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False

    def __str__(self) -> str:
        return f"{self.precision} {'CL' if self.channels_last else 'NCHW'}{' compiled' if self.compile else ''}"


@dataclass
class Measurement:
    """One step's figures: images per step, seconds per phase (mean over timed steps),
    FLOPs per step and the peak memory in bytes."""

    images: int
    seconds: dict[str, float]
    flops: float
    peak_bytes: int
    extra: dict = field(default_factory=dict)

    @property
    def step_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def img_per_s(self) -> float:
        return self.images / self.step_seconds

    @property
    def flop_per_s(self) -> float:
        return self.flops / self.step_seconds


@dataclass
class Row:
    recipe: str
    task: str
    variant: Variant
    ours: Measurement
    ceiling: Measurement | None
    peak_flop_per_s: float

    @property
    def ratio(self) -> float | None:
        return self.ours.flop_per_s / self.ceiling.flop_per_s if self.ceiling else None

    def progress_line(self) -> str:
        ratio = f", ours/ceiling {self.ratio:.2f}" if self.ceiling else ""
        mfu = self.ours.flop_per_s / self.peak_flop_per_s
        return f"{self.recipe} [{self.variant}]: {self.ours.img_per_s:.1f} img/s{ratio}, MFU {mfu:.2f}"


# ---- the steps ---------------------------------------------------------------------------

def matched_batch(recipe, device: torch.device, task_flops: float) -> int:
    """The supervised batch whose step does the FLOPs of the task's step (rotation: 4x the
    batch, two-view methods about 2x): the FLOP-matched ceiling."""
    per_image = measure(recipe, Variant(channels_last=False), device, steps=0, warmup=0, supervised=2).flops / 2
    return max(1, round(task_flops / per_image))


def measure(recipe, variant: Variant, device: torch.device, *, steps: int, warmup: int,
            supervised: int = 0) -> Measurement:
    """Time ``steps`` training steps of the recipe's task, or with ``supervised`` > 0 of
    the supervised ceiling at that batch size."""
    from convssl.encoders import build_encoder
    from convssl.tasks.registry import build_task
    from convssl.train.batches import to_device
    from convssl.train.optim import build_optimizer
    from convssl.train.step import LoopState, train_step

    torch.manual_seed(recipe.train.seed)
    encoder = build_encoder(recipe.encoder)
    batch_size = supervised or recipe.data.batch_size
    if supervised:
        model: nn.Module = Supervised(encoder, recipe.data.mean, recipe.data.std)
    else:
        model = build_task(recipe.task, encoder, recipe.data)
    model.to(device)
    if variant.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe.optim, recipe.optim.lr_per_256 * batch_size / 256)
    batches = _batches(model, recipe, device, count=2, batch_size=batch_size, supervised=bool(supervised))
    compiled = torch.compile(model) if variant.compile else model
    amp = _dtype(variant.precision)
    state = LoopState(model=compiled, task=model, optimizer=optimizer, device=device,
                      scaler=torch.amp.GradScaler(device.type, enabled=False),
                      amp_dtype=None if amp is torch.float32 else amp, clip_grad=recipe.optim.clip_grad,
                      total_steps=1000)

    def one_step(index: int, times: dict[str, float] | None, step_fn=compiled) -> None:
        clock = _Clock(device)
        batch = to_device(batches[index % len(batches)], device, variant.channels_last)
        clock.lap("data", times)
        state.model, state.step = step_fn, index
        train_step(state, batch, lap=lambda name: clock.lap(name, times))

    model.train()
    for i in range(warmup):
        one_step(i, None)
    flops = _count_flops(lambda: one_step(warmup, None, model))  # eager: the counter sees every op
    reset_peak_memory(device)
    times = dict.fromkeys(_SPLIT, 0.0)
    for i in range(steps):
        one_step(warmup + 1 + i, times)
    peak = peak_memory(device)
    return Measurement(images=batch_size, seconds={k: v / max(steps, 1) for k, v in times.items()}, flops=flops,
                       peak_bytes=peak)


class Supervised(nn.Module):
    """The ceiling: normalize, encoder, global average pool, linear classifier, cross-entropy
    against random labels (speed does not depend on the labels)."""

    def __init__(self, encoder, mean, std, num_classes: int = 1000):
        super().__init__()
        self.encoder, self.mean, self.std = encoder, mean, std
        self.head = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        from convssl.views.normalize import normalize

        x_BCHW = normalize(batch["img"][0], self.mean, self.std)
        logits = self.head(F.adaptive_avg_pool2d(self.encoder(x_BCHW)[-1], 1).flatten(1))
        return {"loss": F.cross_entropy(logits.float(), batch["cls"])}

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after a step (``train_step`` calls it on every task)."""


def _batches(model, recipe, device, *, count: int, batch_size: int, supervised: bool) -> list[dict]:
    """``count`` batches of synthetic uint8 images (data.size / 0.875 square, data.channels)
    cut by the task's loader transform and collated as the loader would."""
    from convssl.data.collate import collate_samples

    d = recipe.data
    transform = _sample_transform(model, recipe, supervised)
    g = torch.Generator().manual_seed(0)
    side = max(d.size, round(d.size / 0.875))
    out = []
    for b in range(count):
        samples = []
        for i in range(batch_size):
            img_CHW = torch.randint(0, 256, (d.channels, side, side), dtype=torch.uint8, generator=g)
            sample = dict(transform(img_CHW, torch.Generator().manual_seed(b * batch_size + i)))
            if supervised:
                sample["cls"] = int(torch.randint(0, 1000, (1,), generator=g))
            samples.append(sample)
        out.append(collate_samples(samples))
    return out


def _sample_transform(model, recipe, supervised: bool):
    """The per-sample worker transform: the task's ``loader_transform()`` (the task
    contract); one random resized crop for the supervised step."""
    from convssl.views.crop_views import crop_views

    return crop_views(recipe.data) if supervised else model.loader_transform()


class _Clock:
    """Laps of wall time; on CUDA each lap waits for the device, so phases do not blur."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._sync()
        self.t = time.perf_counter()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def lap(self, name: str, times: dict[str, float] | None) -> None:
        self._sync()
        now = time.perf_counter()
        if times is not None:
            times[name] += now - self.t
        self.t = now


def _count_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype, *, seconds: float = 1.0) -> float:
    """FLOP/s of a square matmul on ``device`` in ``dtype`` (2048 on CPU, 8192 on CUDA)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    clock = _Clock(device)
    a @ b
    clock.lap("warm", None)
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - start >= seconds:
            break
    return reps * 2 * n**3 / (time.perf_counter() - start)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement (see ``peak_memory``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def peak_memory(device: torch.device) -> int:
    """Bytes: CUDA's peak allocated memory, or on CPU the process's peak resident set since
    ``reset_peak_memory`` (the whole peak since start where ``clear_refs`` is not writable)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def _choices(value: str | None, flag: str, allowed: tuple[str, ...], allow_none: bool = False) -> list:
    if value is None and allow_none:
        return [None]
    picked = [v.strip() for v in str(value).split(",") if v.strip()]
    bad = [v for v in picked if v not in allowed]
    if bad or not picked:
        raise ConfigError(f"{flag} takes a comma list of {', '.join(allowed)}; got {value!r}")
    return picked


def format_table(rows: list[Row], device: torch.device) -> str:
    """The Markdown table: one line per (recipe, variant)."""
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    head = (f"`convssl bench step` on {what}, torch {torch.__version__}; matmul rate measured in the same run.\n\n"
            "| recipe | variant | batch | img/s | GFLOP/img | ceiling batch | ours/ceiling | MFU | ceiling MFU "
            "| peak MB (ceiling) | data / fwd / bwd / opt % |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    lines = [head]
    for r in rows:
        o, c = r.ours, r.ceiling
        split = " / ".join(f"{100 * o.seconds[k] / o.step_seconds:.0f}" for k in _SPLIT)
        mfu = o.flop_per_s / r.peak_flop_per_s
        lines.append(
            f"| {r.recipe} | {r.variant} | {o.images} | {o.img_per_s:.1f} | {o.flops / o.images / 1e9:.2f} "
            f"| {c.images if c else '-'} | {f'{r.ratio:.2f}' if c else '-'} | {mfu:.2f} | {f'{c.flop_per_s / r.peak_flop_per_s:.2f}' if c else '-'} "
            f"| {o.peak_bytes / 2**20:.0f}{f' ({c.peak_bytes / 2**20:.0f})' if c else ''} | {split} |")
    return "\n".join(lines)
