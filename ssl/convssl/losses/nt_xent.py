"""NT-Xent, SimCLR's normalized temperature-scaled cross entropy over 2N views.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
eq. (1) and Algorithm 1: ``L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``, i.e. the MEAN
over all 2N anchors. (The public TF code returns twice this: the sum of two means.)

In DDP the negatives come from every rank: the projections of all ranks are gathered
with gradients (``convssl.dist.all_gather_with_grad``); each rank scores only its own
2B anchors against all 2N candidates, so the mean over ranks of the per-rank losses
equals the single-process loss on the global batch, and so do the gradients after DDP
averages them.

Legend: B per-rank batch, N global batch (world_size * B), D projection dim, A = 2B anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convssl import dist


def nt_xent_logits(z1_BD: torch.Tensor, z2_BD: torch.Tensor, temperature: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[2B, 2N]`` of this rank's anchors against all views, and the positive index.

    Rows are ``[view-1 anchors; view-2 anchors]``; columns ``[all view-1; all view-2]`` in
    rank order. Each anchor's own column is -inf (an anchor is not its own negative).
    Computed in float32 whatever the autocast dtype.
    """
    z1 = F.normalize(z1_BD.float(), dim=1)
    z2 = F.normalize(z2_BD.float(), dim=1)
    z1_ND, z2_ND = dist.all_gather_with_grad(z1), dist.all_gather_with_grad(z2)
    B, N = z1.shape[0], z1_ND.shape[0]
    anchors_AD = torch.cat([z1, z2])
    candidates_MD = torch.cat([z1_ND, z2_ND])  # M = 2N
    logits_AM = anchors_AD @ candidates_MD.T / temperature
    mine_B = torch.arange(B, device=z1.device) + dist.rank() * B  # global index of my samples
    self_A = torch.cat([mine_B, mine_B + N])
    target_A = torch.cat([mine_B + N, mine_B])
    # a comparison, not F.one_hot: one_hot reads the indices' min and max on the host
    is_self_AM = self_A[:, None] == torch.arange(2 * N, device=z1.device)[None, :]
    return logits_AM.masked_fill(is_self_AM, float("-inf")), target_A


def nt_xent(z1_BD: torch.Tensor, z2_BD: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The paper's NT-Xent (mean over this rank's 2B anchors; negatives from all ranks)."""
    logits, target = nt_xent_logits(z1_BD, z2_BD, temperature)
    return F.cross_entropy(logits, target)
