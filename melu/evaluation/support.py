"""Fixed-support cold-start curves and per-user figures of a scenario evaluation.

``support_predictions`` gives each method's query predictions when every user keeps only
``n`` of their support ratings (the cold start a person lives through); ``per_user_mae``
keeps the per-user MAE of every method, which the K-fold study pools across folds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from melu.evaluation.metrics import user_mae
from melu.model.maml import Lr
from melu.model.predict import predict_queries
from melu.tables import FeatureTables
from melu.tasks import TaskSet

if TYPE_CHECKING:
    from melu.bundle import Bundle
    from melu.evaluation.fitted import Fitted

SUPPORT_BASELINES = ("baseline_predictor", "mf")  # fixed predictors (no inner loop)
SUPPORT_CURVES = ("maml", "pooled_finetune", *SUPPORT_BASELINES)


def support_predictions(
    bundle: Bundle,
    fitted: Fitted,
    tasks: TaskSet,
    tables: FeatureTables,
    sizes: Sequence[int],
    seed: int,
    lr: Lr,
) -> dict[str, list[Tensor]]:
    """Query predictions (T, Q) per method of ``SUPPORT_CURVES``, one per support size
    (each task keeps a seeded random ``n`` of its support, ``TaskSet.with_support_size``)."""
    steps = bundle.config.meta.inner_steps
    out: dict[str, list[Tensor]] = {key: [] for key in SUPPORT_CURVES}
    for n in sizes:
        sub = tasks.with_support_size(n, seed)
        for key in SUPPORT_BASELINES:
            out[key].append(fitted.support_predict(key, sub))
        for key, model, params, rate in (
            ("maml", bundle.model, bundle.params, lr),
            ("pooled_finetune", fitted.pooled_model, fitted.pooled_params, fitted.finetune_lr),
        ):
            out[key].append(predict_queries(model, params, sub, tables, steps=steps, lr=rate))
    return out


def per_user_mae(
    tasks: TaskSet, preds: Mapping[str, Tensor], curves: Mapping[str, list[Tensor]]
) -> dict[str, Any]:
    """Per-user query MAE (lists of T floats, task order) of every method and of every
    support-curve point, with the tasks' user ids: what the K-fold study pools."""

    def mae(pred: Tensor) -> list[float]:
        return user_mae(pred, tasks.query_ratings, tasks.query_mask.bool()).tolist()

    return {
        "user_ids": tasks.user_ids.tolist(),
        "methods": {m: mae(p) for m, p in preds.items()},
        "support_curve": {k: [mae(p) for p in points] for k, points in curves.items()},
    }
