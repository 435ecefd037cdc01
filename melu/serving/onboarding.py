"""Onboarding: which items to ask a new user to rate first (MeLU's evidence candidates).

MeLU asks about items that are both *known* (people can rate them) and *informative* (the
answer changes what the model believes). We measure the second directly with the one inner
loop: adapt the meta-learned model to the single rating "this item: top of the scale" and,
separately, "this item: bottom of the scale", then compare the two adapted models'
predictions on a fixed probe set of popular items. All items are adapted together by the
one prediction path (``melu.model.predict``), once per bundle load.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from melu.features import FeatureBatch
from melu.model.estimator import PreferenceEstimator, is_embedding
from melu.model.maml import Examples, Lr
from melu.model.predict import predict_examples
from melu.serving.catalog import Catalog
from melu.serving.types import OnboardingItem


def influence(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: FeatureBatch,
    probe: FeatureBatch,
    scale: tuple[float, float],
    *,
    steps: int,
    lr: Lr,
    fast: list[str],
) -> Tensor:
    """Mean |Δ prediction| on ``probe`` (P,) rows from rating each ``support`` row high vs low.

    ``support`` (C,) and ``probe`` (P,) are feature rows of one user with an item each,
    one support row per candidate item. For each candidate, adapt (first order) on that one
    row rated ``scale[1]`` and on it rated ``scale[0]``; returns (C,) the mean over the
    probe rows of the absolute difference between the two adapted models' predictions
    (clamped to the scale), in rating units.
    """
    low, high = scale
    count = next(iter(support.values())).shape[0]
    rows = {k: torch.cat([v, v]).unsqueeze(1) for k, v in support.items()}  # (2C, 1, ...)
    ref = next(iter(params.values()))
    targets = torch.cat([ref.new_full((count,), high), ref.new_full((count,), low)])
    mask = torch.ones(2 * count, 1, dtype=torch.bool, device=ref.device)
    queries = {k: v.expand(2 * count, *v.shape) for k, v in probe.items()}  # (2C, P, ...)
    with torch.inference_mode(False):
        predictions = predict_examples(
            model, params, Examples(rows, targets.unsqueeze(1), mask), queries,
            steps=[steps], lr=lr, fast=fast,
        )[0]  # fmt: skip  # (2C, P)
    predictions = predictions.clamp(low, high)  # a diverging answer moves at most the scale
    return (predictions[:count] - predictions[count:]).abs().mean(dim=1)


def evidence_scores(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    rows: FeatureBatch,
    popularity: np.ndarray,
    scale: tuple[float, float],
    *,
    steps: int,
    lr: Lr,
    probe_size: int = 100,
    chunk: int = 256,
) -> np.ndarray:
    """Influence (I,) of every catalog item for a user whose features are all unknown.

    ``rows`` (I, ...) are the feature rows of that user with each catalog item;
    ``popularity`` (I,) the training rating counts. The probe set is the ``probe_size``
    most-rated items. Items nobody rated get influence 0 (nobody could answer about
    them). Only MLP parameters adapt here, even when the bundle also adapts embeddings.
    """
    fast = [n for n in model.fast_names() if not is_embedding(n)]
    out = np.zeros(len(popularity), dtype=np.float64)
    if steps == 0 or not fast or len(popularity) == 0:
        return out
    device = next(iter(rows.values())).device
    order = np.lexsort((np.arange(len(popularity)), -popularity))
    probe_index = torch.as_tensor(order[:probe_size], device=device)
    probe = {k: v[probe_index] for k, v in rows.items()}
    known = np.flatnonzero(popularity > 0)
    for start in range(0, len(known), chunk):
        part = known[start : start + chunk]
        index = torch.as_tensor(part, device=device)
        support = {k: v[index] for k, v in rows.items()}
        values = influence(model, params, support, probe, scale, steps=steps, lr=lr, fast=fast)
        out[part] = values.double().cpu().numpy()
    return out


def rank(catalog: Catalog, influence: np.ndarray) -> list[OnboardingItem]:
    """The whole catalog as onboarding items, best first (ties by item id).

    ``influence`` (I,) per catalog row; score = ``log(1 + n_ratings) × influence``.
    """
    popularity = catalog.n_ratings.astype(np.float64)
    scores = np.log1p(popularity) * influence
    order = np.lexsort((catalog.item_ids, -scores))
    items = []
    for row in order.tolist():
        item = catalog.item(row)
        count, value, score = int(catalog.n_ratings[row]), float(influence[row]), float(scores[row])
        items.append(
            OnboardingItem(item.item_id, item.title, item.year, item.genres, count, value, score)
        )
    return items
