"""Onboarding: which items to ask a new user to rate first (MeLU's evidence candidates).

MeLU asks about items that are both *known* (people can rate them) and *informative* (the
answer changes what the model believes). We measure the second directly with the one inner
loop: adapt the meta-learned model to the single rating "this item: top of the scale" and,
separately, "this item: bottom of the scale", then compare the two adapted models'
predictions on a fixed probe set of popular items. All items are adapted together under
``vmap``, once per bundle load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from melu.model.estimator import PreferenceEstimator, apply
from melu.model.maml import Examples, adapt


def influence(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Tensor,
    probe: Tensor,
    scale: tuple[float, float],
    *,
    steps: int,
    lr: float | Mapping[str, Tensor],
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
        adapted, _ = adapt(
            model, params, Examples(x, r, m), steps=steps, lr=lr, first_order=True, fast=fast
        )
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
    steps: int,
    lr: float | Mapping[str, Tensor],
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
        values = influence(model, params, rows[index], probe, scale, steps=steps, lr=lr, fast=fast)
        out[part] = values.double().cpu().numpy()
    return out
