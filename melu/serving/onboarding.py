"""Onboarding: which items to ask a new user to rate first (MeLU's evidence candidates).

MeLU asks about items that are both *known* (people can rate them) and *informative* (the
answer changes what the model believes). We measure the second directly with the one inner
loop: adapt the meta-learned model to the single rating "this item: top of the scale" and,
separately, "this item: bottom of the scale", then compare the two adapted models'
predictions on a fixed probe set of popular items. All items are adapted together under
``vmap``, once per bundle load. An item's score is ``log(1 + n_ratings) × influence``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from melu.model.estimator import Params, PreferenceEstimator, apply
from melu.model.maml import Examples
from melu.serving.catalog import Catalog
from melu.serving.types import OnboardingItem

# adapt (first order, the bundle's steps and rates) of ``params`` to ``support``, only the
# named fast parameters: the recommender's one adaptation call
AdaptFn = Callable[[Mapping[str, Tensor], Examples, Sequence[str]], tuple[Params, Tensor]]


def influence(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Tensor,
    probe: Tensor,
    scale: tuple[float, float],
    *,
    adapt: AdaptFn,
    fast: Sequence[str],
) -> Tensor:
    """Mean |Δ prediction| on ``probe`` (P, E) from rating each ``support`` row high vs low.

    ``support`` (C, E) are embedded (user, item) rows, one per candidate item. For each
    candidate, adapt (first order) on that one row rated ``scale[1]`` and on it rated
    ``scale[0]``; returns (C,) the mean over the probe rows of the absolute difference
    between the two adapted models' predictions (clamped to the scale), in rating units.
    """
    low, high = scale
    count = support.shape[0]
    rows = torch.cat([support, support]).unsqueeze(1)  # (2C, 1, E)
    targets = torch.cat([support.new_full((count,), high), support.new_full((count,), low)])
    mask = torch.ones(2 * count, 1, dtype=torch.bool, device=support.device)

    def one(x: Tensor, r: Tensor, m: Tensor) -> Tensor:
        adapted, _ = adapt(params, Examples(x, r, m), fast)
        return apply(model, adapted, probe)  # (P,)

    with torch.inference_mode(False), torch.no_grad():
        predictions = vmap(one)(rows, targets.unsqueeze(1), mask)  # (2C, P)
    predictions = predictions.clamp(low, high)  # a diverging answer moves at most the scale
    return (predictions[:count] - predictions[count:]).abs().mean(dim=1)


def evidence_scores(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    rows: Tensor,
    popularity: np.ndarray,
    scale: tuple[float, float],
    *,
    adapt: AdaptFn,
    steps: int,
    probe_size: int = 100,
    chunk: int = 256,
) -> np.ndarray:
    """Influence (I,) of every catalog item for a user whose features are all unknown.

    ``rows`` (I, E) are the embedded rows of that user with each catalog item;
    ``popularity`` (I,) the training rating counts. The probe set is the ``probe_size``
    most-rated items. Items nobody rated get influence 0 (nobody could answer about
    them). Only MLP parameters adapt here, even when the bundle also adapts embeddings
    (the rows are already embedded).
    """
    fast = [n for n in model.fast_names() if not n.startswith("embeddings.")]
    out = np.zeros(len(popularity), dtype=np.float64)
    if steps == 0 or not fast or len(popularity) == 0:
        return out
    order = np.lexsort((np.arange(len(popularity)), -popularity))
    probe = rows[torch.as_tensor(order[:probe_size], device=rows.device)]
    known = np.flatnonzero(popularity > 0)
    for start in range(0, len(known), chunk):
        part = known[start : start + chunk]
        index = torch.as_tensor(part, device=rows.device)
        values = influence(model, params, rows[index], probe, scale, adapt=adapt, fast=fast)
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
