"""DINO's self-distillation loss: the student's softmax matched to the centred, sharpened
teacher's, over every (global teacher view, other student view) pair.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers", eq. (3)
and Algorithm 1: ``P_t = softmax((g_t(x) - C) / tau_t)``, ``P_s = softmax(g_s(x') / tau_s)``,
``L = mean over pairs (t != s) of mean_b - sum_k P_t log P_s``; the teacher sees only the
global views, the student all. The centre ``C`` is an EMA of the teacher's mean output
over the GLOBAL batch (eq. 4, ``C <- m C + (1 - m) mean``, m = 0.9): the batch mean is
all-reduced over ranks, as in DINO's ``update_center``.

Legend: B per-rank batch, K prototypes (output dim), V views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convssl import dist


def teacher_probabilities(teacher_logits: list[torch.Tensor], center_1K: torch.Tensor,
                          temperature: float) -> list[torch.Tensor]:
    """Centred, sharpened teacher distributions ``softmax((t - C) / tau_t)``, no gradient."""
    return [F.softmax((t.detach().float() - center_1K) / temperature, dim=-1) for t in teacher_logits]


def dino_loss(teacher_probs: list[torch.Tensor], student_logits: list[torch.Tensor],
              student_temperature: float) -> torch.Tensor:
    """Cross-entropy ``-sum_k P_t log softmax(s / tau_s)`` averaged over the batch and over
    the pairs of teacher view ``i`` and student view ``j != i``. Float32."""
    pairs = [(i, j) for i in range(len(teacher_probs)) for j in range(len(student_logits)) if i != j]
    if not pairs:
        raise ValueError("dino_loss needs two views at least: a student view other than the teacher's")
    log_p = [F.log_softmax(s.float() / student_temperature, dim=-1) for s in student_logits]
    return sum(-(teacher_probs[i] * log_p[j]).sum(dim=-1).mean() for i, j in pairs) / len(pairs)


@torch.no_grad()
def updated_center(center_1K: torch.Tensor, teacher_logits: list[torch.Tensor], momentum: float) -> torch.Tensor:
    """Eq. (4): ``m C + (1 - m) mean(teacher outputs)``, the mean over every rank's global views."""
    batch_mean = torch.cat(teacher_logits).float().mean(dim=0, keepdim=True)
    batch_mean = dist.all_reduce_mean(batch_mean)
    return momentum * center_1K + (1 - momentum) * batch_mean


def teacher_temperature_at(step: int, total_steps: int, start: float, end: float, warmup_fraction: float) -> float:
    """DINO's teacher temperature at ``step``: ``np.linspace(start, end, W)[step]`` over the
    first ``W = round(warmup_fraction * total_steps)`` steps (at least 1 when the fraction is
    not 0: the first step is always at ``start``), ``end`` after (the paper: 0.04 -> 0.07 over
    the first 30 of 100 epochs, fraction 0.3)."""
    warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0
    if step >= warmup:
        return end
    if warmup == 1:
        return start
    return start + (end - start) * step / (warmup - 1)
