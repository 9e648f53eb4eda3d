"""``auto``: per layer, the fastest backend that computes the same function.

At the first forward of a new input shape, one forward in eval mode (no running-statistics
update) records each conv/pool layer's real input; then each backend able to run the layer
is timed on it (forward and backward: input and weight gradients, never accumulated into
``.grad``), and kept only if its output matches the ``masked`` reference to 1e-4 relative.
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


def available_candidates() -> list[str]:
    out = []
    for name in CANDIDATES:
        try:
            B.load_backend(name)
        except Exception:  # noqa: BLE001 - spconv not installed: auto simply does without it
            continue
        out.append(name)
    return out


def _timed(kernel, layer, x, m_in, m_out, ctx, grad_y, reps):
    params = [p for p in layer.parameters() if p.requires_grad]
    best, y = float("inf"), None
    for _ in range(reps + 1):  # the first run warms up
        start = time.perf_counter()
        xi = x.detach().requires_grad_()
        y = kernel(layer, xi, m_in, m_out, ctx)
        torch.autograd.grad(y, [xi, *params], grad_y if grad_y is not None else torch.ones_like(y))
        best = min(best, time.perf_counter() - start) if _ else best
    return best, y.detach()


def choose(inputs: dict[str, torch.Tensor], layers: dict, ctx, *, reps: int = 2) -> tuple[dict[str, str], list[dict]]:
    """({path: backend}, table rows) for the recorded inputs of ``layers`` ({path: sparse twin})."""
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
        gen = torch.Generator().manual_seed(0)
        ref_t, ref_y = _timed(masked.dense_then_mask, layer, x, m_in, m_out, ctx, None, reps)
        grad_y = torch.randn(ref_y.shape, generator=gen).to(ref_y) * m_out.to(ref_y.dtype)
        ref_t, ref_y = _timed(masked.dense_then_mask, layer, x, m_in, m_out, ctx, grad_y, reps)
        times, best = {"masked": ref_t}, "masked"
        scale = float(ref_y.abs().max()) + 1e-12
        for name, kernel in options:
            try:
                t, y = _timed(kernel, layer, x, m_in, m_out, ctx, grad_y, reps)
            except RuntimeError as exc:  # e.g. a dtype or device the backend's kernels lack
                log.warning("auto: %s cannot run %s (%s); not used", name, path, exc)
                continue
            if float((y - ref_y).abs().max()) > REL_TOL * scale:
                log.warning("auto: %s on %s does not match masked; not used", name, path)
                continue
            times[name] = t
            if t < times[best]:
                best = name
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
