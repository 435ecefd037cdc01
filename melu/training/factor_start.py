"""Where the collaborative part starts: at the end of matrix factorisation.

Before meta-training a model with ``factors`` and item ids, biased MF (ALS, at the
regularisation MF's validation picked) on all training ratings gives the network's output
bias μ and each known item's bias and factor; ``MetaTrainer`` writes them into the fresh
parameters, so the outer loop starts from a good collaborative model, not from noise.
"""

from __future__ import annotations

from melu.model.estimator import Params, PreferenceEstimator
from melu.prepare import Prepared


def init_item_factors(model: PreferenceEstimator, params: Params, prepared: Prepared) -> None:
    """Start the collaborative part where matrix factorisation ends: biased MF (ALS) on all
    training ratings gives μ (the network's output bias), each known item's bias and
    factor (its id's rows of ``item.bias`` / ``item.factor``). In place, before training."""
    from melu.evaluation.mf import MFConfig, fit_als

    rows, tables = prepared.train_ratings, prepared.tables
    mf = fit_als(
        rows, len(tables.user_ids), len(tables.item_ids), prepared.features.rating_scale,
        rank=model.factors, reg=ALS_REG, config=MFConfig(),
    )  # fmt: skip
    ids = tables.items[model.id_field or ""].long()
    known = ids != 0
    bias, factor = params["item.bias"], params["item.factor"]
    index = ids[known].to(bias.device)
    bias[index] = mf.item_bias[known].to(device=bias.device, dtype=bias.dtype)
    factor[index] = mf.item_factors[known].to(device=factor.device, dtype=factor.dtype)
    params[model.head_prefix + "bias"].fill_(mf.mu)


ALS_REG = 15.0  # λ of the initialising ALS (sum of squared errors): MF's validation pick
