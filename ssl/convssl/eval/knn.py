"""Weighted k-nearest-neighbour classification on cosine similarity.

Wu et al. (2018, "Unsupervised feature learning via non-parametric instance
discrimination", sec. 3.4): the k most similar training samples vote for their class
with weight exp(s / T), T = 0.07; DINO (Caron et al. 2021) uses the same with k = 20
and reports k = 20 and 200. Features are L2-normalised, not standardised, as there.

Legend: N training samples, M queries, D dims, K classes, k neighbours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KS = (20, 200)
TEMPERATURE = 0.07
_SIM_BUDGET = 1 << 25  # similarity entries per chunk (32M floats, 128 MB)


def knn_predict(train_ND: torch.Tensor, train_y_N: torch.Tensor, query_MD: torch.Tensor, *,
                ks=KS, num_classes: int | None = None, temperature: float = TEMPERATURE,
                chunk_size: int | None = None) -> dict[int, torch.Tensor]:
    """Predicted class of every query for each k: ``{k: pred_M}``.

    Queries are processed ``chunk_size`` at a time (default: as many as keep the
    M x N similarity block within ~32M entries), so memory stays bounded. A k larger
    than N uses all N training samples.
    """
    if num_classes is None:
        num_classes = int(train_y_N.max()) + 1
    train_ND = F.normalize(train_ND.float(), dim=1)
    train_y_N = train_y_N.to(train_ND.device)
    n = len(train_ND)
    k_max = min(max(ks), n)
    chunk_size = chunk_size or max(1, min(4096, _SIM_BUDGET // max(n, 1)))
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(query_MD), chunk_size):
        q_MD = F.normalize(query_MD[start:start + chunk_size].to(train_ND.device).float(), dim=1)
        sim_MN = q_MD @ train_ND.T
        sim_Mk, idx_Mk = sim_MN.topk(k_max, dim=1)  # sorted, most similar first
        weight_Mk = (sim_Mk / temperature).exp()
        label_Mk = train_y_N[idx_Mk]
        for k in ks:
            kk = min(k, n)
            votes_MK = torch.zeros(len(q_MD), num_classes, device=q_MD.device)
            votes_MK.scatter_add_(1, label_Mk[:, :kk], weight_Mk[:, :kk])
            preds[k].append(votes_MK.argmax(1))
    return {k: torch.cat(p) for k, p in preds.items()}


def knn_correct(train_ND: torch.Tensor, train_y_N: torch.Tensor, val_ND: torch.Tensor, val_y_N: torch.Tensor, *,
                ks=KS, temperature: float = TEMPERATURE, num_classes: int | None = None,
                chunk_size: int | None = None, device: torch.device | str | None = None) -> dict[int, torch.Tensor]:
    """Whether the weighted kNN classifier gets each val sample right, for each k: ``{k: bool [M]}`` (CPU)."""
    if num_classes is None:
        num_classes = int(max(train_y_N.max(), val_y_N.max())) + 1
    if device is not None:
        train_ND = train_ND.to(device)
    preds = knn_predict(train_ND, train_y_N, val_ND, ks=ks, num_classes=num_classes,
                        temperature=temperature, chunk_size=chunk_size)
    val_y_N = val_y_N.to(train_ND.device)
    return {k: (pred_M == val_y_N).cpu() for k, pred_M in preds.items()}


def knn_eval(train_ND: torch.Tensor, train_y_N: torch.Tensor, val_ND: torch.Tensor, val_y_N: torch.Tensor, *,
             ks=KS, temperature: float = TEMPERATURE, num_classes: int | None = None,
             chunk_size: int | None = None, device: torch.device | str | None = None) -> dict[int, float]:
    """Top-1 accuracy (a fraction in [0, 1]) of the weighted kNN classifier for each k: ``{k: top-1}``."""
    correct = knn_correct(train_ND, train_y_N, val_ND, val_y_N, ks=ks, temperature=temperature,
                          num_classes=num_classes, chunk_size=chunk_size, device=device)
    return {k: c.double().mean().item() for k, c in correct.items()}
