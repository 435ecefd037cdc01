"""Item–item top-N baselines: item-kNN (cosine on co-ratings) and EASE^R (Steck 2019).

Both learn an (I, I) matrix W from the binary who-rated-what matrix X (training users ×
catalog items, ``Prepared.train_ratings`` only) and score a new user's catalog as
``x_support · W`` (x: 1 per support item, or the rating: ``weighting``), i.e. the sum of
W's rows of the support items. An item without training ratings has a zero row and column.

- item-kNN: W_ij = cos(i, j) = G_ij / √(G_ii G_jj), G = XᵀX the co-rating counts, W_ii = 0;
  optionally each row keeps only its ``neighbours`` largest entries (the K items most
  similar to the support item, Deshpande & Karypis 2004).
- EASE^R: B = argmin ‖X − XB‖² + λ‖B‖² s.t. diag(B) = 0, in closed form
  B = I − P·diag(1/diag(P)), P = (G + λI)⁻¹.
- EASE^R with the liked items as the target: B = argmin ‖Y − XB‖² + λ‖B‖² s.t.
  diag(B) = 0, Y the training ratings ≥ the protocol's threshold (what it counts as
  relevant); the same closed form as the ranking head's liked part
  (``ranking_stats.liked_weights``), here alone over catalog items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from melu.evaluation.topn import Supports
from melu.prepare import RatingRows

Weighting = Literal["binary", "rating"]
WEIGHTINGS: tuple[Weighting, ...] = ("binary", "rating")
TIE_BREAK = 1e-6  # popularity's share of a score: it only orders items that tie


def support_weights(supports: Supports, weighting: Weighting) -> Tensor:
    """(C, n) float32 weight of each support slot (0 on padding): 1 or the rating."""
    mask = supports.mask.float()
    return mask if weighting == "binary" else supports.ratings.float() * mask


def break_ties(scores: Tensor, popularity: Tensor) -> Tensor:
    """``scores`` (C, I) plus a popularity term far below any real difference, so items
    a method cannot tell apart (no support: the no-ratings list; no co-rating) are ordered
    by training popularity ``popularity`` (I,) instead of catalog order."""
    top = scores.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)  # (C, 1)
    share = (popularity / popularity.max().clamp(min=1.0)).to(scores.dtype)  # (I,) in [0, 1]
    return scores + TIE_BREAK * top * share


def rated_matrix(rows: RatingRows, n_items: int) -> sp.csr_matrix:
    """Binary (training users, I) CSR matrix of who rated what (users compacted)."""
    _, users = np.unique(rows.user_rows.numpy(), return_inverse=True)
    items = rows.item_rows.numpy().astype(np.int64)
    data = np.ones(len(items), dtype=np.float64)
    shape = (int(users.max()) + 1 if len(users) else 0, n_items)
    matrix = sp.csr_matrix((data, (users, items)), shape=shape)
    matrix.data[:] = 1.0  # a duplicated pair still counts once
    return matrix


def gram(rows: RatingRows, n_items: int) -> Tensor:
    """G = XᵀX (I, I) float64: G_ij = how many training users rated both i and j."""
    x = rated_matrix(rows, n_items)
    return torch.from_numpy(np.asarray((x.T @ x).toarray(), dtype=np.float64))


def liked_gram(rows: RatingRows, n_items: int, threshold: float) -> Tensor:
    """XᵀY (I, I) float64: [j, i] = how many training users rated j and rated i at least
    ``threshold`` (Y: X restricted to those ratings; the users compacted alike)."""
    _, users = np.unique(rows.user_rows.numpy(), return_inverse=True)
    x = rated_matrix(rows, n_items)
    liked = rows.ratings.numpy() >= threshold
    items = rows.item_rows.numpy().astype(np.int64)
    y = sp.csr_matrix((np.ones(int(liked.sum())), (users[liked], items[liked])), shape=x.shape)
    y.data[:] = 1.0
    return torch.from_numpy(np.asarray((x.T @ y).toarray(), dtype=np.float64))


@dataclass(frozen=True)
class ItemItemRanker:
    """Scores ``x_support · weights``: weights (I, I) float32, row i = what rating item i
    adds to every item; ``popularity`` (I,) breaks ties."""

    weights: Tensor
    weighting: Weighting
    popularity: Tensor

    def scores(self, supports: Supports) -> Tensor:
        """(C, I) float32: Σ over the support of weight × the support item's row."""
        w = support_weights(supports, self.weighting)  # (C, n)
        rows = self.weights[supports.items.long()]  # (C, n, I)
        scores = torch.einsum("cn,cni->ci", w, rows)
        return break_ties(scores, self.popularity)


def cosine(g: Tensor) -> Tensor:
    """(I, I) cosine similarity of the binary item columns from G, zero diagonal."""
    norm = g.diagonal().sqrt()
    denom = norm.unsqueeze(0) * norm.unsqueeze(1)
    sim = torch.where(denom > 0, g / denom.clamp(min=1e-12), 0.0)
    return sim.fill_diagonal_(0.0)


def keep_neighbours(sim: Tensor, neighbours: int) -> Tensor:
    """Each row's ``neighbours`` largest entries (0 = all of them), the rest set to 0."""
    if neighbours <= 0 or neighbours >= sim.shape[1]:
        return sim
    values, index = sim.topk(neighbours, dim=1)
    return torch.zeros_like(sim).scatter_(1, index, values)


def ease(g: Tensor, lam: float) -> Tensor:
    """EASE^R's B (I, I) float64 for the Gram matrix ``g`` and ridge ``lam``, diag(B) = 0."""
    a = g + lam * torch.eye(len(g), dtype=g.dtype)
    p = torch.cholesky_inverse(torch.linalg.cholesky(a))  # (G + λI)⁻¹, symmetric
    b = -p / p.diagonal().unsqueeze(0)  # B_ij = −P_ij / P_jj
    return b.fill_diagonal_(0.0)
