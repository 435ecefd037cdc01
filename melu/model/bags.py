"""Bag means of multi-valued fields (genres): ``EmbeddingBag(mode="mean", padding_idx=0)``
written for callers that differentiate once and never vmap (packed rows, the row-space kernel)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bag_mean(idx: Tensor, weight: Tensor, dense_up_to: int = 64) -> Tensor:
    """``EmbeddingBag(mode="mean", padding_idx=0)`` of (..., L) indices into ``weight``
    (V, D): (..., D), the mean of each bag's non-padding rows (0 if none). A small table
    (V ≤ ``dense_up_to``, as the genres) by one matmul of the bags' normalised counts
    (R, V) — its backward one matmul too, where ``F.embedding_bag``'s loops over bags."""
    flat = idx.reshape(-1, idx.shape[-1])  # (R, L)
    if weight.shape[0] > dense_up_to:
        rows = F.embedding_bag(flat, weight, mode="mean", padding_idx=0)
    else:
        counts = weight.new_zeros(flat.shape[0], weight.shape[0])
        counts.scatter_add_(1, flat, weight.new_ones(()).expand(flat.shape))
        counts[:, 0] = 0.0  # the padding index
        rows = (counts / counts.sum(-1, keepdim=True).clamp(min=1.0)) @ weight
    return rows.view(*idx.shape[:-1], weight.shape[-1])
