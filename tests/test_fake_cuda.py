"""A GPU's first contact without a GPU: every recipe's training step on fake CUDA tensors.

Under ``FakeTensorMode`` a CUDA build of torch makes ``cuda`` tensors that carry shape,
dtype, strides and device but no data, on a machine without a GPU, and raises
``FakeTensorDeviceMismatchError`` where a CPU tensor meets a CUDA one, as a GPU would. CPU
work stays real here (``RealCpu``): the loader's crops, CPU generators, ``.tolist()`` of a
CPU draw compute as they do in a run, and only what reaches the device is fake.

For every recipe with a task sized for a CPU (<= 64 px: every task of the registry through
at least one, checked, and the multi-task recipes), built from that recipe with a small
batch, this runs what the trainer runs per step on a GPU, in its order: the
task and a batch cut by its own ``loader_transform`` moved as ``train.batches.to_device`` moves
it (channels-last as the recipe says), the forward under the recipe's autocast (bf16 on a
GPU for ``precision: auto``), the optimizer step on gradients shaped as backward leaves
them, ``after_step`` (momentum encoders, queues), the logged scalars stacked as ``_log``
stacks them, ``pictures``; then the online monitor's and the probe's feature passes on the
trained encoder. SparK runs on each backend fake tensors can run (masked, gather, and auto
on restored choices). A tensor a task leaves on the CPU fails here instead of in a user's
first hour on a GPU.

What fake tensors cannot run (backward, ``torch.cuda.*``, NCCL, pinned memory, real
asynchronous copies, ``auto``'s timing, ``spconv``, ``torch.compile``) is reviewed by
hand: issue 23's closing note.

Legend: N samples, D feature dims.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils import _pytree as pytree
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from convssl.views.photometric_config import ColorAugConfig
from convssl.views.view_augment import prepare_view
from convssl.data.collate import collate_samples
from convssl.data.shard_dataset import ShardDataset
from convssl.encoders import build_encoder
from convssl.eval.features import extract_features, labeled_batches
from convssl.recipe import recipe_from_dict
from convssl.tasks.registry import TASKS, build_task
from convssl.sparse.backends import windowed_layers
from convssl.train.finite import StepGuard, finite_step
from convssl.eval.monitor import Monitor
from convssl.train.optim import build_optimizer
from convssl.train.batches import to_device as _to_device

try:
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
except ImportError:  # pragma: no cover - a torch without fake tensors
    FakeTensorMode = None

REPO = Path(__file__).resolve().parents[1]
UNLABELED = str(REPO / "data" / "fmnist" / "unlabeled")
LABELED = str(REPO / "data" / "fmnist" / "train")
CUDA = torch.device("cuda", 0)
BATCH = 16  # MoCo's small recipe splits its batch into 8 BN groups of >= 2
PATCH_TASKS = {"context", "jigsaw"}  # encoders trained on patches, probed on a grid of patches

pytestmark = pytest.mark.skipif(
    FakeTensorMode is None or torch.version.cuda is None,
    reason="fake CUDA tensors need a CUDA build of torch with FakeTensorMode (this one is CPU-only or has none)")


def _task_recipes() -> dict[str, dict]:
    """Every recipe in recipes/ with a task section and inputs of at most 64 px, by file stem.

    The ImageNet recipes (224 px) run the same task code on a ResNet-50, whose real
    construction and stage discovery cost 10-20 s per case on 2 cores; what they add on the
    device, 3-channel colour augmentation with grayscale and blur, is
    ``test_device_augmentation_on_fake_cuda``."""
    out = {}
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if isinstance(raw, dict) and "task" in raw and raw.get("data", {}).get("size", 224) <= 64:
            out[path.stem] = raw
    return out


RECIPES = _task_recipes()


def _task_names(section: dict) -> set[str]:
    names = {section["name"]}
    for sub in section.get("tasks", []):
        names |= _task_names(sub)
    return names


# SparK under fake tensors: ``masked`` and ``gather`` are torch ops and run; ``auto`` runs
# with its per-layer choices restored, as a resumed run restores them from its checkpoint (a
# mix of masked and gather), since its timing needs real kernels, ``torch.cuda.synchronize``
# and a backward; ``spconv`` is compiled kernels that take real tensors only.
SPARK_BACKENDS = ("masked", "gather", "auto")
CASES = [pytest.param(stem, backend, id=f"{stem}-{backend}" if backend else stem)
         for stem, raw in RECIPES.items()
         for backend in (SPARK_BACKENDS if "spark" in _task_names(raw["task"]) else (None,))]


def _small_task(section: dict, backend: str | None) -> dict:
    """The task section with SparK's ``backend`` and a 10-permutation jigsaw (the recipe's 100
    maximally distant permutations take 5-20 s of CPU to draw; the device code is the same)."""
    section = dict(section)
    if section["name"] == "spark" and backend is not None:
        section["backend"] = backend
    if section["name"] == "jigsaw":
        section["permutations"] = 10
    if "tasks" in section:
        section["tasks"] = [_small_task(sub, backend) for sub in section["tasks"]]
    return section


def small_recipe(stem: str, backend: str | None):
    """The recipe as shipped, with a small batch, one in-process loader and a small jigsaw."""
    raw = dict(RECIPES[stem])
    raw["data"] = {**raw["data"], "batch_size": BATCH, "workers": 0}
    raw["task"] = _small_task(raw["task"], backend)
    return recipe_from_dict(raw)


def restore_auto_choices(task, recipe) -> list:
    """Every SparK's ``auto`` choices for this batch's shape on CUDA, as loaded from a
    checkpoint: alternate conv/pool layers on gather and masked. Returns the sparse encoders."""
    from convssl.tasks.spark import SparK

    sparse = [m.sparse_encoder for m in task.modules() if isinstance(m, SparK) and m.cfg.backend == "auto"]
    c, size = recipe.data.channels, recipe.data.size
    for enc in sparse:
        choices = {path: ("gather", "masked")[i % 2] for i, path in enumerate(windowed_layers(enc.view))}
        for layout in ("cf", "cl"):  # SparseEncoder.shape_key of the normalised input
            enc.backend_choices[f"{BATCH}x{c}x{size}x{size}/float32/cuda/{layout}"] = choices
    return sparse


def real_batch(task, recipe) -> dict:
    """A batch as the loader yields it: the task's own transform per sample, collated (CPU)."""
    data = ShardDataset(UNLABELED, transform=task.loader_transform(), channels=recipe.data.channels,
                        shuffle_buffer=1)
    samples = list(itertools.islice(data, recipe.data.batch_size))
    assert len(samples) == recipe.data.batch_size, "not enough samples"
    return collate_samples(samples)


# ---- fake CUDA, real CPU ----------------------------------------------------------------
def _names_cuda(leaves) -> bool:
    return any(isinstance(x, FakeTensor) or (isinstance(x, torch.device) and x.type == "cuda")
               or (isinstance(x, str) and x.startswith("cuda")) for x in leaves)


class RealCpu(TorchDispatchMode):
    """Ops that touch neither a fake tensor nor a CUDA device run for real on the CPU, so
    the CPU side of a step (draws from CPU generators read with ``.tolist()``, host
    constants) computes as in a run; the rest goes on to ``FakeTensorMode``, which turns
    real CPU inputs into fake CPU tensors and so still raises when one meets a CUDA one."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _names_cuda(pytree.arg_tree_leaves(*args, **kwargs)):
            return func(*args, **kwargs)
        with unset_fake_temporarily():
            return func(*args, **kwargs)


class GeneratorDevices(TorchFunctionMode):
    """A random draw's generator must be on the draw's device, as CUDA requires and fake
    tensors do not check; a stand-in for a CUDA generator (``fake_cuda``) counts as one.
    Checked where the call still holds the Python generator (dispatch sees a copy)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if generator is not None:
            device = kwargs.get("device")
            tensors = [a for a in pytree.arg_tree_leaves(*args) if isinstance(a, torch.Tensor)]
            draw = torch.device(device).type if device is not None else tensors[0].device.type if tensors else "cpu"
            held = getattr(generator, "stands_for", generator.device.type)
            if held != draw:
                raise RuntimeError(f"{getattr(func, '__name__', func)}: a {held} generator for a {draw} draw "
                                   "(CUDA requires the generator on the draw's device)")
        return func(*args, **kwargs)


# a read of one value to the host (inference mode dispatches the composite ones here too)
HOST_READS = (torch.ops.aten._local_scalar_dense, torch.ops.aten.item, torch.ops.aten.is_nonzero)


class HostReadsAnswer(TorchDispatchMode):
    """Answers a host read of a fake tensor (``bool()``, ``.item()``) with ``answer``:
    fake tensors hold no values. Only around the probe's feature pass, whose one host read
    picks the storage dtype (``features._compact``: float16 when every value fits)."""

    def __init__(self, answer):
        super().__init__()
        self.answer, self.reads = answer, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in HOST_READS and isinstance(args[0], FakeTensor):
            self.reads += 1
            return self.answer
        return func(*args, **(kwargs or {}))


@contextmanager
def fake_cuda(monkeypatch):
    """Fake CUDA tensors on a real CPU; yields ``(mode, generator_devices)``: the fake mode
    and the device types ``torch.Generator`` was asked for.

    The mode has a shape environment, so ``nonzero`` (visible sites of a mask whose count is
    not known up front: SparK's pictures) gets a symbolic size instead of failing. Two
    adapters for what a machine without a GPU cannot give, neither touching convssl:
    - ``Module.to`` on fake parameters swaps tensors (``torch.utils.swap_tensors``), which
      refuses tensors with weak references, and the fake mode memoizes every fake tensor by
      one: the memo entries of the two tensors are dropped just before each swap.
    - ``torch.Generator(device="cuda")`` needs a driver: a CPU generator stands in for it
      (fake ``randperm`` does not check the generator's device), and the device asked for is
      recorded so the test can check it.
    """
    mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())
    converter = mode.fake_tensor_converter.meta_converter
    swap = torch.utils.swap_tensors

    def swap_fake(t1, t2):
        for t in (t1, t2):
            for key, value in list(converter.tensor_memo.items()):
                if value is t:
                    del converter.tensor_memo[key]
            converter.describer.lookup_tensor.pop(t, None)
        return swap(t1, t2)

    asked: list[str] = []

    class Generator(torch.Generator):
        def __new__(cls, device="cpu"):
            asked.append(torch.device(device).type)
            return super().__new__(cls, "cpu")

        def __init__(self, device="cpu"):
            self.stands_for = torch.device(device).type

    monkeypatch.setattr(torch.utils, "swap_tensors", swap_fake)
    monkeypatch.setattr(torch, "Generator", Generator)
    with mode, RealCpu(), GeneratorDevices():
        yield mode, asked


@contextmanager
def cuda_autocast(dtype: torch.dtype | None):
    """``torch.autocast("cuda", dtype)`` as the trainer enters it; the Python class turns
    itself off without a GPU, so the CUDA autocast state is set directly."""
    if dtype is None:
        yield
        return
    before = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", before[0])
        torch.set_autocast_dtype("cuda", before[1])
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()  # its low-precision copies of the weights, as autocast's exit


def gpu_autocast_dtype(precision: str) -> torch.dtype | None:
    """``precision.autocast_dtype`` on a bf16 GPU (every GPU lent here: H100, H200)."""
    return {"fp32": None, "auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _on_cuda(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor) and t.device.type == "cuda"


# ---- the test ---------------------------------------------------------------------------
def test_every_registered_task_has_a_recipe_here():
    covered = set().union(*(_task_names(raw["task"]) for raw in RECIPES.values()))
    assert set(TASKS) <= covered, f"tasks without a recipe (so without a fake-CUDA step): {set(TASKS) - covered}"


@pytest.mark.parametrize("stem, backend", CASES)
def test_a_training_step_on_fake_cuda(stem, backend, monkeypatch):
    recipe = small_recipe(stem, backend)
    torch.manual_seed(0)
    task = build_task(recipe.task, build_encoder(recipe.encoder), recipe.data)
    task.train()
    cpu_batch = real_batch(task, recipe)
    channels_last = recipe.train.channels_last
    monitor = Monitor(LABELED, recipe.data, samples=2 * BATCH, batch_size=BATCH, probe_epochs=1)
    auto = restore_auto_choices(task, recipe)

    with fake_cuda(monkeypatch) as (mode, generators):
        # pretrain(): the task on the device, then the layout; the optimizer over its parameters
        task.to(CUDA)
        if channels_last:
            task.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(task, recipe.optim, lr=0.1)
        guard = StepGuard(task, max_in_a_row=3)
        trainable = [p for p in task.parameters() if p.requires_grad]

        # _loop(): one step
        batch = _to_device(cpu_batch, CUDA, channels_last)
        guard.before_forward()
        with cuda_autocast(gpu_autocast_dtype(recipe.train.precision)):
            out = task(batch)
        loss = out["loss"]
        assert _on_cuda(loss) and loss.dim() == 0, f"loss on {loss.device}"
        optimizer.zero_grad(set_to_none=True)
        for p in trainable:  # what backward leaves: a gradient like its parameter
            p.grad = torch.zeros_like(p)
        clip = recipe.optim.clip_grad if recipe.optim.clip_grad > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, clip)
        finite = finite_step(loss, grad_norm) & guard.buffers_finite().to(loss.device)
        assert _on_cuda(finite)
        optimizer.step()
        task.after_step(0, 10)
        scalars = [v.detach().float() for v in out.values() if torch.is_tensor(v) and v.numel() == 1]
        assert _on_cuda(torch.stack(scalars))  # _log's one stacked all-reduce
        with torch.no_grad():
            picture = task.pictures(batch)
        assert picture is None or picture.device.type == "cpu"
        assert all(enc.measurements == 0 and set(enc.layer_backends.values()) == {"gather", "masked"}
                   for enc in auto), "auto did not run on its restored choices"
        # no parameter, buffer or optimizer state wandered off the device
        state = [*task.parameters(), *task.buffers(),
                 *(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())]
        assert all(_on_cuda(t) for t in state), "a parameter, buffer or optimizer state left the device"
        del out, loss  # the graph, which backward frees; it holds the parameters

        # the online monitor's and the probe's feature passes on the trained encoder
        encoder = task.export_encoder()
        feats_ND = monitor.features(encoder)
        assert feats_ND.device.type == "cpu" and feats_ND.shape == (2 * BATCH, encoder.feature_dim)
        with labeled_batches(LABELED, recipe.data.size, recipe.data.channels, BATCH, 0) as batches:
            # the loader's CPU tensors as fake CPU ones: under inference mode a real tensor's
            # ``.to("cuda")`` escapes the fake mode and asks for a driver
            batches = ((mode.from_tensor(img, static_shapes=True), cls) for img, cls in itertools.islice(batches, 2))
            grid = 3 if _task_names(recipe.task.to_section()) & PATCH_TASKS else 1  # their probe protocol: features.py
            with HostReadsAnswer(answer=True) as reads:
                probe = extract_features(encoder, batches, mean=recipe.data.mean, std=recipe.data.std,
                                         patch_grid=grid)
        assert reads.reads <= len(encoder.stages) * 2, "host reads beyond features._compact's"
        assert [f.feats_ND.shape[0] for f in probe.stages] == [2 * BATCH] * len(encoder.stages)
        assert all(_on_cuda(p) for p in encoder.parameters())
    if "moco" in _task_names(recipe.task.to_section()) and task.cfg.shuffle_bn:
        assert "cuda" in generators, "MoCo's key shuffle drew its permutation off the device"


@pytest.mark.parametrize("channels", [1, 3])
def test_device_augmentation_on_fake_cuda(channels, monkeypatch):
    """Every photometric operation of the contrastive views (jitter in all four kinds,
    grayscale, blur, solarize) on a fake CUDA batch, from uint8 to the normalised input."""
    cfg = ColorAugConfig(jitter_p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, grayscale_p=0.2,
                         blur_p=0.5, solarize_p=0.2)
    img_BCHW = torch.randint(0, 256, (4, channels, 64, 64), dtype=torch.uint8)
    with fake_cuda(monkeypatch):
        x_BCHW = prepare_view(img_BCHW.to(CUDA), cfg, mean=[0.5] * channels, std=[0.25] * channels)
        assert _on_cuda(x_BCHW) and x_BCHW.shape == img_BCHW.shape and x_BCHW.dtype == torch.float32
