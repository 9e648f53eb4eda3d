"""``auto``: per layer, the fastest backend that computes the same function.

At the first forward of a new input shape, one forward in eval mode (no running-statistics
update) records each conv/pool layer's real input; then each backend able to run the layer
is kept only if its output matches the ``masked`` reference to 1e-4 relative (that run is its
warm-up), then timed on it against masked (forward and backward: input and weight gradients,
never accumulated into ``.grad``; the candidates take turns, the fastest of 3 rounds counts).
A candidate over twice the fastest warm-up is dropped before the timed rounds.
The choices are cached per shape by the caller (``SparseEncoder.backend_choices``, saved in
SparK's checkpoint), so a resumed run does not measure again.
"""

from __future__ import annotations

import logging
import time

import torch

from convssl.sparse import backends as B
from convssl.sparse.backends import masked
from convssl.sparse.layers import output_size

log = logging.getLogger(__name__)

CANDIDATES = ("gather", "spconv")  # spconv only where installed
REL_TOL = 1e-4
SLOW_WARMUP = 2.0


def available_candidates() -> list[str]:
    out = []
    for name in CANDIDATES:
        try:
            B.load_backend(name)
        except Exception:  # noqa: BLE001 - spconv not installed: auto simply does without it
            continue
        out.append(name)
    return out


def _run(kernel, layer, x, m_in, m_out, ctx, grad_y) -> tuple[float, torch.Tensor]:
    """Seconds for one forward + backward (input and weight gradients) of ``kernel``, and its output."""
    params = [p for p in layer.parameters() if p.requires_grad]
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)  # GPU kernels run asynchronously
    sync()
    start = time.perf_counter()
    xi = x.detach().requires_grad_()
    y = kernel(layer, xi, m_in, m_out, ctx)
    torch.autograd.grad(y, [xi, *params], grad_y)
    sync()
    return time.perf_counter() - start, y.detach()


def choose(inputs: dict[str, torch.Tensor], layers: dict, ctx, *, reps: int = 3) -> tuple[dict[str, str], list[dict]]:
    """({path: backend}, table rows) for the recorded inputs of ``layers`` ({path: sparse twin}).

    Per layer, the candidates take turns for ``reps`` rounds after one warm-up round, and
    each keeps its fastest round: a load spike on a shared machine then hits one round of
    one candidate, not all rounds of it."""
    names = available_candidates()
    choices, rows = {}, []
    for path, layer in layers.items():
        x = inputs.get(path)
        if x is None:
            choices[path] = "masked"
            continue
        m_in = ctx.at(x.shape[-2:])
        options = [(n, k) for n in names for k, _ in [B.kernel_for(n, layer)] if k is not None]
        if not options:
            choices[path] = "masked"
            rows.append({"layer": path, "shape": tuple(x.shape), "ms": {}, "choice": "masked"})
            continue
        m_out = ctx.at(output_size(layer, x.shape[-2:]))
        with torch.no_grad():
            ref_y = masked.dense_then_mask(layer, x, m_in, m_out, ctx)
        gen = torch.Generator().manual_seed(0)
        grad_y = torch.randn(ref_y.shape, generator=gen).to(ref_y) * m_out.to(ref_y.dtype)
        scale = float(ref_y.abs().max()) + 1e-12
        kernels = {"masked": masked.dense_then_mask}
        warm = {"masked": _run(masked.dense_then_mask, layer, x, m_in, m_out, ctx, grad_y)[0]}
        for name, kernel in options:  # a candidate must compute the reference's output (its warm-up run)
            try:
                warm[name], y = _run(kernel, layer, x, m_in, m_out, ctx, grad_y)
            except Exception as exc:  # noqa: BLE001 - e.g. a dtype or device its kernels lack (logged)
                log.warning("auto: %s cannot run %s (%s); not used", name, path, exc)
                continue
            if float((y - ref_y).abs().max()) > REL_TOL * scale:
                log.warning("auto: %s on %s does not match masked; not used", name, path)
                continue
            kernels[name] = kernel
        # A candidate over SLOW_WARMUP times the fastest in its warm-up run cannot win by the
        # few per cent timing noise moves: it is not timed further (spconv at high resolution
        # on CPU is 5-10x masked, and its timing rounds were most of a measurement's cost).
        fastest = min(warm[name] for name in kernels)
        kernels = {n: k for n, k in kernels.items() if n == "masked" or warm[n] <= SLOW_WARMUP * fastest}
        times = {name: float("inf") for name in kernels}
        for _ in range(reps):
            for name, kernel in kernels.items():
                t, _ = _run(kernel, layer, x, m_in, m_out, ctx, grad_y)
                times[name] = min(times[name], t)
        best = min(times, key=times.get)
        times |= {n: t for n, t in warm.items() if n not in times}  # the table shows the dropped ones' warm-up
        choices[path] = best
        rows.append({"layer": path, "shape": tuple(x.shape), "ms": {k: v * 1e3 for k, v in times.items()},
                     "choice": best})
    log.info("sparse backend auto, choices:\n%s", format_table(rows))
    return choices, rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of the timed choices."""
    names = ["masked", *CANDIDATES]  # noqa: RUF005
    lines = ["| layer | input | " + " | ".join(f"{n} ms" for n in names) + " | choice |",
             "|---|---|" + "---|" * len(names) + "---|"]
    for r in rows:
        cells = [f"{r['ms'][n]:.2f}" if n in r["ms"] else "-" for n in names]
        lines.append(f"| {r['layer']} | {'x'.join(map(str, r['shape']))} | " + " | ".join(cells) + f" | {r['choice']} |")
    return "\n".join(lines)
