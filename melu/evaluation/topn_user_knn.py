"""User-kNN: a new user's catalog scored by the training users who rated what they rated.

The user-based neighbourhood (Herlocker et al. 1999; among the strong top-N baselines of
Dacrema et al. 2019) is the one classic kind of top-N method that is not linear in the
support: the item–item methods (item-kNN, EASE^R, RP³β) add up what each rated item says
alone, while here a training user who rated *several* of the new user's films weighs far
more than one who shares a single film (sim^α). For a support x (C, I) (1 on each rated
item) and the training users' who-rated-what X (V, I), both binary:

    sim = x Xᵀ / √|X_v|        (C, V) the overlap, over the root of the training user's count
                               (cosine without the new user's own norm, a constant per row)
    w   = sim^α, each row's ``neighbours`` largest kept (0: every training user)
    s   = w T                  (C, I), T = X (what the neighbours rated) or Y (what they
                               liked: rated at least the protocol's threshold)

Ties (no neighbour: the no-ratings list) are ordered by training popularity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from melu.evaluation.topn import Supports
from melu.evaluation.topn_item_item import break_ties
from melu.prepare import RatingRows

Target = Literal["rated", "liked"]
TARGETS: tuple[Target, ...] = ("rated", "liked")


@dataclass(frozen=True)
class Neighbours:
    """The training users as neighbours: ``rated`` X and ``liked`` Y (V, I) binary CSR,
    and ``norm`` (V,) √|X_v| float32 (1 for a user without ratings)."""

    rated: sp.csr_matrix
    liked: sp.csr_matrix
    norm: Tensor

    @classmethod
    def from_rows(cls, rows: RatingRows, n_items: int, threshold: float) -> Neighbours:
        """From the training ratings ``rows`` (users compacted to 0..V−1 in id order)."""
        _, users = np.unique(rows.user_rows.numpy(), return_inverse=True)
        items = rows.item_rows.numpy().astype(np.int64)
        shape = (int(users.max()) + 1 if len(users) else 0, n_items)

        def binary(keep: np.ndarray) -> sp.csr_matrix:
            m = sp.csr_matrix((np.ones(int(keep.sum())), (users[keep], items[keep])), shape=shape)
            m.data[:] = 1.0  # a duplicated pair still counts once
            return m.astype(np.float32)

        rated = binary(np.ones(len(items), dtype=bool))
        liked = binary(rows.ratings.numpy() >= threshold)
        counts = np.asarray(rated.sum(axis=1)).ravel()
        norm = torch.from_numpy(np.sqrt(np.maximum(counts, 1.0)).astype(np.float32))
        return cls(rated, liked, norm)


@dataclass(frozen=True)
class UserKnnRanker:
    """Scores ``w T`` (module docstring) for the ``neighbours``, with ``alpha``, the
    ``keep`` largest neighbours per user (0: all) and the ``target`` matrix; ``popularity``
    (I,) breaks ties."""

    neighbours: Neighbours
    alpha: float
    keep: int
    target: Target
    popularity: Tensor

    def similarity(self, supports: Supports) -> Tensor:
        """(C, V) float32 w: sim^α of each support to every training user, the ``keep``
        largest per row (the rest 0)."""
        bag = np.zeros((len(supports), self.neighbours.rated.shape[1]), dtype=np.float32)
        mask = supports.mask.numpy()
        rows = np.nonzero(mask)[0]
        bag[rows, supports.items.numpy()[mask]] = 1.0  # a repeated item still counts once
        overlap = torch.from_numpy(np.asarray(self.neighbours.rated @ bag.T).T.copy())
        w = (overlap / self.neighbours.norm).pow(self.alpha)
        if 0 < self.keep < w.shape[1]:
            value, index = w.topk(self.keep, dim=1)
            w = torch.zeros_like(w).scatter_(1, index, value)
        return w

    def scores(self, supports: Supports) -> Tensor:
        """(C, I) float32: Σ over the training users of w × their row of the target."""
        w = self.similarity(supports).numpy()
        t = self.neighbours.rated if self.target == "rated" else self.neighbours.liked
        scores = torch.from_numpy(np.asarray(t.T @ w.T).T.copy())
        return break_ties(scores, self.popularity)
