"""InfoNCE against a queue of negative keys (MoCo).

He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning",
eq. (1) and Algorithm 1: logits ``[q.k+, q.queue] / tau`` with the positive at index 0,
cross entropy with target 0, averaged over the queries. Queries and keys are L2-normalized
here; the queue holds normalized keys already.

Legend: B queries, D embedding dim, K queue length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce_logits(q_BD: torch.Tensor, k_BD: torch.Tensor, queue_KD: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """Logits ``[B, 1 + K]``: column 0 is the positive key, the rest the queue. float32.

    ``k`` and ``queue`` get no gradient (MoCo's keys come from the momentum encoder).
    """
    q = F.normalize(q_BD.float(), dim=1)
    k = F.normalize(k_BD.float(), dim=1).detach()
    pos_B1 = (q * k).sum(dim=1, keepdim=True)
    neg_BK = q @ queue_KD.float().detach().T
    return torch.cat([pos_B1, neg_BK], dim=1) / temperature


def info_nce(q_BD: torch.Tensor, k_BD: torch.Tensor, queue_KD: torch.Tensor,
             temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE loss: mean over queries of ``-log softmax(logits)[0]``."""
    logits = info_nce_logits(q_BD, k_BD, queue_KD, temperature)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
