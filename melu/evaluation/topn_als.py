"""Implicit-feedback MF (weighted ALS, Hu, Koren & Volinsky 2008) from the ``implicit`` library.

Fit on the binary who-rated-what matrix of the training users (``Prepared.train_ratings``),
restricted to the items they rated: the confidence of a rated pair is ``alpha`` (times the
rating with ``weighting="rating"``), of every other pair 1 (the library's convention). A new
user is folded in from their support by the library's ``recalculate_user`` (the user's
weighted least-squares problem with the item factors fixed, solved exactly), and every
catalog item is scored p_u · q_i; items without training ratings have q_i = 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits
from torch import Tensor

from melu.evaluation.topn import Supports
from melu.evaluation.topn_item_item import Weighting, break_ties, support_weights
from melu.prepare import RatingRows


@dataclass(frozen=True)
class ALSSettings:
    """One point of the grid: the library's hyper-parameters and the confidence weighting."""

    factors: int = 64
    regularization: float = 1.0
    alpha: float = 10.0
    iterations: int = 15
    weighting: Weighting = "binary"


@dataclass(frozen=True)
class ImplicitALSRanker:
    """A fitted ``AlternatingLeastSquares`` over the ``columns`` (J,) catalog rows that had
    training ratings; ``popularity`` (I,) breaks ties."""

    model: AlternatingLeastSquares
    columns: Tensor  # (J,) long: catalog row of each of the model's items
    n_items: int
    weighting: Weighting
    popularity: Tensor

    def fold_in(self, supports: Supports) -> Tensor:
        """(C, f) float32 user factors from the supports (``recalculate_user``)."""
        column_of = torch.full((self.n_items,), -1, dtype=torch.long)
        column_of[self.columns] = torch.arange(len(self.columns))
        cols = column_of[supports.items.long()]  # (C, n); −1: no training ratings
        keep = supports.mask & (cols >= 0)
        rows = torch.arange(len(supports)).unsqueeze(1).expand_as(cols)
        values = support_weights(supports, self.weighting)[keep].numpy()
        user_items = sp.csr_matrix(
            (values, (rows[keep].numpy(), cols[keep].numpy())),
            shape=(len(supports), len(self.columns)),
        )
        with _quiet_blas():
            factors = self.model.recalculate_user(np.arange(len(supports)), user_items)
        return torch.from_numpy(np.asarray(factors, dtype=np.float32).reshape(len(supports), -1))

    def scores(self, supports: Supports) -> Tensor:
        """(C, I) float32: p_u · q_i for every catalog item (0 for unrated items)."""
        items = torch.from_numpy(np.asarray(self.model.item_factors, dtype=np.float32))
        item_factors = torch.zeros(self.n_items, items.shape[1]).index_copy_(0, self.columns, items)
        scores = self.fold_in(supports) @ item_factors.T
        return break_ties(scores, self.popularity)


def fit_implicit_als(
    rows: RatingRows, n_items: int, settings: ALSSettings, popularity: Tensor, seed: int = 0
) -> ImplicitALSRanker:
    """The library's ALS on the training users × rated items (float32, seeded)."""
    _, users = np.unique(rows.user_rows.numpy(), return_inverse=True)
    columns, items = np.unique(rows.item_rows.numpy(), return_inverse=True)
    values = np.ones(len(rows)) if settings.weighting == "binary" else rows.ratings.numpy()
    user_items = sp.csr_matrix(
        (values.astype(np.float32), (users, items)),
        shape=(int(users.max()) + 1, len(columns)),
    )
    with _quiet_blas():
        model = AlternatingLeastSquares(
            factors=settings.factors,
            regularization=settings.regularization,
            alpha=settings.alpha,
            iterations=settings.iterations,
            random_state=seed,
            num_threads=torch.get_num_threads(),
        )
        model.fit(user_items, show_progress=False)
    cols = torch.from_numpy(columns.astype(np.int64))
    return ImplicitALSRanker(model, cols, n_items, settings.weighting, popularity)


@contextmanager
def _quiet_blas() -> Iterator[None]:
    """BLAS on one thread while the library runs (its own threads do the work, and it warns
    about a threaded BLAS), that warning silenced where a BLAS ignores the limit."""
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*configured to use", category=RuntimeWarning)
        yield
