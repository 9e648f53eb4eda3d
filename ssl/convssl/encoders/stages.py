"""Find an encoder's stages from one dummy forward.

A convnet's forward is, at some depth of its module tree, a chain of modules each fed
the previous one's output (``conv1, bn1, relu, maxpool, layer1..4, avgpool, fc`` for a
ResNet; ``features.0..16, avgpool, classifier`` for MobileNetV3). We recover that chain,
cut it where global pooling or a non-spatial output starts (the head), and end a stage
wherever the next module changes the spatial size. A leading group holding a single
convolution (a stem such as ResNet's ``conv1-bn1-relu``) is folded into the next stage,
so a ResNet at 224 px has stages at reductions 4, 8, 16, 32, as in SparK and FPNs.

Legend: B batch, C channels, H/W spatial size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from convssl.errors import EncoderError

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
# The size at which an input-size check compares stages: every common convnet keeps all of
# its stages apart there (a ResNet's last stage is 8x8).
REFERENCE_SIZE = 256


@dataclass(frozen=True)
class Stage:
    """One stage: the module whose output is the stage map, its channels and reduction."""

    name: str
    channels: int
    reduction: int


@dataclass
class Trunk:
    """The discovered layout: the chain of module names, its stages and the dropped head."""

    chain: list[str]
    stages: list[Stage]
    head: list[str] = field(default_factory=list)
    # a map shrank to 1x1 before global pooling: later stages may have merged or fallen into the head
    collapsed: bool = False


@dataclass
class _Call:
    order: int
    in_hw: tuple[int, int] | None = None
    out_hw: tuple[int, int] | None = None
    out_c: int | None = None
    done: bool = False


def _hw(t) -> tuple[int, int] | None:
    return tuple(t.shape[-2:]) if isinstance(t, torch.Tensor) and t.dim() == 4 else None


def record_calls(model: nn.Module, x_BCHW: torch.Tensor) -> dict[str, _Call]:
    """First call of every module: call order, input/output spatial size, output channels.

    The forward may fail past the trunk (a Linear head sized for another input); what
    ran before that is all discovery needs.
    """
    calls: dict[str, _Call] = {}
    handles = []
    for name, module in model.named_modules():
        def pre(mod, args, name=name):
            if name not in calls:
                calls[name] = _Call(order=len(calls), in_hw=_hw(args[0]) if args else None)

        def post(mod, args, out, name=name):
            call = calls[name]
            if not call.done:
                call.done, call.out_hw = True, _hw(out)
                call.out_c = out.shape[1] if call.out_hw else None

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(x_BCHW)
    except Exception as exc:  # judged below: fine if the trunk already ran
        failure = exc
    else:
        failure = None
    finally:
        for h in handles:
            h.remove()
    if failure is not None and not any(c.out_hw for c in calls.values() if c.done):
        raise EncoderError(
            f"the model failed on a dummy input of shape {tuple(x_BCHW.shape)}: {failure}. "
            "Give the input size and channels the model expects (input_size, in_chans)."
        ) from failure
    return calls


def _children_called(module: nn.Module, prefix: str, calls: dict[str, _Call]) -> list[tuple[str, nn.Module]]:
    kids = [(f"{prefix}.{n}" if prefix else n, m) for n, m in module.named_children()]
    kids = [(n, m) for n, m in kids if n in calls]
    return sorted(kids, key=lambda nm: calls[nm[0]].order)


def _spans_several_resolutions(name: str, module: nn.Module, calls: dict[str, _Call]) -> bool:
    sizes = {calls[name].in_hw}
    sizes |= {calls[n].out_hw for n, _ in _children_called(module, name, calls) if calls[n].out_hw}
    sizes.discard(None)
    return len(sizes) > 2


def chain_of(module: nn.Module, prefix: str, calls: dict[str, _Call]) -> list[str]:
    """The module names that run in sequence, expanding children spanning several resolutions."""
    chain = []
    for name, child in _children_called(module, prefix, calls):
        if any(True for _ in child.children()) and _spans_several_resolutions(name, child, calls):
            chain += chain_of(child, name, calls)
        else:
            chain.append(name)
    return chain


def _is_head_start(model: nn.Module, name: str, call: _Call) -> bool:
    if not call.done or call.out_hw is None:
        return True  # failed, or returns something other than a BCHW map
    module = model.get_submodule(name)
    if _is_global_pool(module):
        return True
    shrinks_to_point = call.out_hw == (1, 1) and call.in_hw not in (None, (1, 1))
    return shrinks_to_point and not any(True for _ in module.parameters())


def _conv_count(model: nn.Module, names: list[str]) -> int:
    return sum(
        isinstance(m, nn.Conv2d) for n in names for m in model.get_submodule(n).modules()
    )


def discover(model: nn.Module, x_BCHW: torch.Tensor) -> Trunk:
    """Chain, stages and head of ``model`` for inputs shaped like ``x_BCHW``."""
    calls = record_calls(model, x_BCHW)
    chain = chain_of(model, "", calls)
    cut = next((i for i, n in enumerate(chain) if _is_head_start(model, n, calls[n])), len(chain))
    trunk, head = chain[:cut], chain[cut:]
    if not trunk:
        raise EncoderError(
            f"found no convolutional trunk in {type(model).__name__}: no module in its forward "
            "returns a BxCxHxW map. Give the stage module names explicitly (stages=[...])."
        )
    groups: list[list[str]] = []
    for name in trunk:
        if groups and calls[groups[-1][-1]].out_hw == calls[name].out_hw:
            groups[-1].append(name)
        else:
            groups.append([name])
    if len(groups) > 1 and _conv_count(model, groups[0]) <= 1:
        groups[1] = groups[0] + groups[1]
        groups.pop(0)
    ends = [g[-1] for g in groups]
    reductions = _reductions(model, x_BCHW, ends, calls)
    stages = [Stage(n, calls[n].out_c, r) for n, r in zip(ends, reductions)]
    ungated = trunk + [n for n in head[:1] if not _is_global_pool(model.get_submodule(n))]
    collapsed = any(calls[n].out_hw == (1, 1) for n in ungated if calls[n].done)
    return Trunk(chain=trunk, stages=stages, head=head, collapsed=collapsed)


def _is_global_pool(module: nn.Module) -> bool:
    return isinstance(module, _GLOBAL_POOLS) or "AdaptivePool" in type(module).__name__


def stages_lost_at(model: nn.Module, in_chans: int, trunk: Trunk) -> tuple[list[str], int] | None:
    """``(stage names, smallest size)`` when ``trunk`` (found at a size where a map shrank to
    1x1) lacks stages the model has at ``REFERENCE_SIZE``: they merged into one 1x1 stage or
    fell into the head. The size is the smallest power of two keeping them all. None when
    nothing is lost, or when the model cannot run at the reference size (fixed-size models).
    Call with ``model`` in eval mode."""
    def names_at(size: int) -> list[str]:
        return [s.name for s in discover(model, torch.zeros(1, in_chans, size, size)).stages]

    try:
        wanted = names_at(REFERENCE_SIZE)
    except EncoderError:
        return None
    lost = [n for n in wanted if n not in {s.name for s in trunk.stages}]
    if not lost:
        return None
    size = 2
    while size < REFERENCE_SIZE and names_at(size) != wanted:
        size *= 2
    return lost, size


def _reductions(model: nn.Module, x_BCHW: torch.Tensor, names: list[str], calls: dict[str, _Call]) -> list[int]:
    """Input size / stage size; measured again at a size divisible by 64 when the given
    size does not divide evenly (a 20 px input would otherwise report 7, 10, 20)."""
    in_h = x_BCHW.shape[-2]
    if all(in_h % calls[n].out_hw[0] == 0 for n in names):
        return [in_h // calls[n].out_hw[0] for n in names]
    clean = 64 * max(4, -(-in_h // 64))
    again = record_calls(model, x_BCHW.new_zeros(*x_BCHW.shape[:2], clean, clean))
    return [max(1, round(clean / again[n].out_hw[0])) for n in names]


def stages_for_names(model: nn.Module, x_BCHW: torch.Tensor, names: list[str]) -> list[Stage]:
    """Channels and reductions of explicitly named stage modules."""
    calls = record_calls(model, x_BCHW)
    missing = [n for n in names if n not in calls or not calls[n].done or calls[n].out_hw is None]
    if missing:
        raise EncoderError(
            f"stage modules {missing} did not return a BxCxHxW map in a forward; "
            f"modules that did: {[n for n, c in calls.items() if c.out_hw][:30]}"
        )
    order = sorted(names, key=lambda n: calls[n].order)
    return [Stage(n, calls[n].out_c, r) for n, r in zip(order, _reductions(model, x_BCHW, order, calls))]
