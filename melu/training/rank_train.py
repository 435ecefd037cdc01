"""Training the ranking head (``melu.model.ranking``) on top of the meta-trained rating part.

1. The start (``train.rank_start``): EASE^R alone (λ and its support weighting picked on
   the validation users) with popularity breaking ties, or popularity.
2. Its part weights per support size (popularity, the adapted predicted rating,
   co-occurrence, the trained parts), picked on the validation users at 0, 1, 3, 5 and 10
   ratings (``rank_mix``; ``train.rank_mix``). This is epoch 0.
3. ``train.rank_epochs`` epochs of likelihood training (``rank_epoch.HeadTrainer``),
   compared on the validation users at 3, 5 and 10 ratings (what training is for); the
   best is re-mixed and kept only if it beats epoch 0 on all the validation supports.

Test users are never looked at; the rating part is never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from melu.config import Config
from melu.evaluation.topn import (
    TopNProtocol,
    TopNUsers,
    topn_users,
)
from melu.model import ranking, ranking_stats
from melu.model.estimator import Params, PreferenceEstimator
from melu.model.maml import Lr
from melu.model.personal import shared_cut
from melu.prepare import Prepared
from melu.training.rank_ease import (
    NeighbourChoice,
    pick_ease,
    pick_liked,
    pick_neighbours,
    pick_walk,
)
from melu.training.rank_epoch import HeadTrainer

Progress = Callable[[dict[str, Any]], None]
EASE_SUPPORTS = (3, 5, 10)  # what EASE^R's λ is picked on
TRAINED_SUPPORTS = (3, 5, 10)  # what the epochs of likelihood training are compared on
VALIDATION_SUPPORTS = (0, 1, 3, 5, 10)  # what the kept epoch is picked on
# The mixed parts' weights of the EASE^R start (``train.rank_start = "ease"``), before any
# pick: popularity only to break ties, no predicted rating or co-occurrence, the trained
# parts (still zero) at 1; EASE^R's weight is the scale.
EASE_START_MIX = {
    "rank.pop_weight": 1e-3, "rank.rating_weight": 0.0, "rank.cooc_weight": 0.0,
    "rank.learned_weight": 1.0, "rank.liked_weight": 0.0, "rank.walk_weight": 0.0,
    "rank.neighbour_weight": 0.0,
}  # fmt: skip
MIXING = (  # the head's scalar and per-rating-level weights: rank_trained="mixing"
    "rank.level_weight", "rank.rating_weight", "rank.unknown_bias", "rank.cooc_weight",
    "rank.pop_weight", "rank.ease_level", "rank.ease_weight",
)  # fmt: skip


@dataclass
class RankResult:
    params: Params  # the head's parameters (rank.*) of the best validation epoch
    best_epoch: int
    history: list[dict[str, Any]]
    settings: dict[str, Any]  # what was chosen on the validation users before training


def _trained(name: str, which: str) -> bool:
    """Whether the head's parameter ``name`` is trained under ``train.rank_trained``."""
    if name in ranking.STATISTICS:
        return False
    return which == "all" or name in MIXING


def neighbour_start(
    prepared: Prepared, ids: Tensor, n_ids: int, users: list[TopNUsers], threshold: float
) -> NeighbourChoice:
    """The user-kNN part from the training users who rated anything (``pick_neighbours``:
    α and K picked on the validation draws ``users``); ``ids`` (I,) each catalog row's id."""
    rated_ids = ids.cpu()[prepared.train_ratings.item_rows.long()]
    raters = prepared.train_ratings.user_rows.long()
    n_users = len(prepared.tables.user_ids)
    liked = prepared.train_ratings.ratings >= threshold
    rated = ranking_stats.rated_ids(rated_ids, raters, n_ids, n_users)
    active = rated.sum(1) > 0  # (n_users,): the training users
    liked_by = ranking_stats.rated_ids(rated_ids[liked], raters[liked], n_ids, n_users)
    return pick_neighbours(rated[active], liked_by[active], ids.cpu(), users, threshold)


def _start(config: Config, model: PreferenceEstimator, prepared: Prepared, ids: Tensor,
           val_users: list[TopNUsers], report: Progress) -> tuple[Params, dict[str, Any]]:  # fmt: skip
    """The head before training: popularity, co-occurrence, EASE^R, the liked-target and
    RP³β's walk item–item weights (each one's λ or (α, β) and support weighting picked on
    the validation users) and, with ``train.rank_neighbours``, the training users as
    user-kNN neighbours (α and K picked alike), as ``train.rank_start`` says (the liked,
    walk and neighbour parts start at weight 0 either way)."""
    tc = config.train
    shapes = model.rank_shapes()
    n_ids = shapes["rank.item_bias"][0]
    rated_ids = ids.cpu()[prepared.train_ratings.item_rows.long()]
    raters = prepared.train_ratings.user_rows.long()
    n_users = len(prepared.tables.user_ids)
    start = ranking.init_head(shapes, torch.bincount(rated_ids, minlength=n_ids), tc.seed)
    start["rank.shared_cut"] = shared_cut(tc.rank_keep_shared, tc.rank_shared_from)
    start["rank.cooccurrence"], start["rank.item_count"] = ranking_stats.cooccurrence(
        rated_ids, raters, n_ids, n_users
    )
    ease_users = [
        u for n, u in zip(VALIDATION_SUPPORTS, val_users, strict=True) if n in EASE_SUPPORTS
    ]
    gram = ranking_stats.co_ratings(rated_ids, raters, n_ids, n_users)
    levels = shapes["rank.ease_level"][0]
    threshold = TopNProtocol().threshold
    ease = pick_ease(gram, ids.cpu(), ease_users, threshold, prepared.features, levels)
    start["rank.ease"] = ease.matrix
    start["rank.ease_weight"] = torch.full_like(start["rank.ease_weight"], ease.scale)
    start["rank.ease_level"] = ease.level_weight.clone()
    if tc.rank_start == "ease":  # start as EASE^R alone (top item +5 logits); learn the rest
        start["rank.ease_weight"] = torch.full_like(start["rank.ease_weight"], 5.0 * ease.scale)
        for name, value in EASE_START_MIX.items():
            start[name] = torch.full_like(start[name], value)
    report({"event": "rank_ease", "lambda": ease.setting, "validation": ease.grid})
    liked_pairs = prepared.train_ratings.ratings >= threshold
    liked_gram = ranking_stats.co_ratings(rated_ids, raters, n_ids, n_users, liked_pairs)
    liked = pick_liked(
        gram, liked_gram, ids.cpu(), ease_users, threshold, prepared.features, levels
    )
    rated = ranking_stats.rated_ids(rated_ids, raters, n_ids, n_users)
    walk = pick_walk(rated, ids.cpu(), ease_users, threshold, prepared.features, levels)
    for part, choice in (("liked", liked), ("walk", walk)):
        # weight 1: the top item +5 logits; the part starts at weight 0 (EASE_START_MIX)
        start[f"rank.{part}"] = choice.matrix * (5.0 * choice.scale)
        start[f"rank.{part}_level"] = choice.level_weight.clone()
        report({"event": f"rank_{part}", "setting": choice.setting, "validation": choice.grid})
    settings = {
        "ease_lambda": ease.setting, "ease_validation": ease.grid,
        "liked_lambda": liked.setting, "liked_validation": liked.grid,
        "walk_alpha_beta": walk.setting, "walk_validation": walk.grid,
    }  # fmt: skip
    if tc.rank_neighbours:
        near = neighbour_start(prepared, ids, n_ids, ease_users, threshold)
        start.update(near.params)  # its weight starts at 0 (EASE_START_MIX)
        report({"event": "rank_neighbours", "setting": near.setting, "validation": near.grid})
        settings |= {"neighbour_alpha_keep": near.setting, "neighbour_validation": near.grid}
    return start, settings


def _pooled(values: list[Tensor], supports: tuple[int, ...]) -> float:
    """Mean NDCG@10 of the validation users pooled over the settings of ``supports``."""
    picked = [v for n, v in zip(VALIDATION_SUPPORTS, values, strict=True) if n in supports]
    return float(torch.cat(picked).mean())


def _row(epoch: int, loss: float | None, values: list[Tensor]) -> dict[str, Any]:
    by_n = {str(n): float(v.mean()) for n, v in zip(VALIDATION_SUPPORTS, values, strict=True)}
    score = _pooled(values, VALIDATION_SUPPORTS)
    return {"epoch": epoch, "rank_loss": loss, "val_ndcg@10": score, "val_by_support": by_n}


def train_ranking(
    config: Config,
    model: PreferenceEstimator,
    rating_params: Mapping[str, Tensor],
    prepared: Prepared,
    device: torch.device,
    lr: Lr,
    progress: Progress | None = None,
) -> RankResult:
    """Train the head on top of the fixed ``rating_params``; returns the head kept.

    Epoch 0 is the start with its part weights picked on validation users
    (``train.rank_mix``). With mixing, the epochs are compared on the supports training is
    for (``TRAINED_SUPPORTS``), the best re-mixed (so a user with few ratings is not ranked
    by parts trained for many) and kept only if it beats epoch 0 on all of
    ``VALIDATION_SUPPORTS``; without, on all of them directly."""
    report = progress or (lambda _e: None)
    tc = config.train
    val_users = [topn_users(prepared, "validation", n) for n in VALIDATION_SUPPORTS]
    trainer = HeadTrainer(config, model, rating_params, prepared, device, lr, val_users)
    start, settings = _start(config, model, prepared, trainer.ids, val_users, report)
    dtype = next(iter(trainer.fixed.values())).dtype  # the rating part's (float64 in tests)
    head = {
        k: v.to(device=device, dtype=dtype).requires_grad_(_trained(k, tc.rank_trained))
        for k, v in start.items()
    }
    key = TRAINED_SUPPORTS if tc.rank_mix else VALIDATION_SUPPORTS
    if tc.rank_mix:  # each support size's part weights picked on its validation users
        settings["mixing"] = trainer.remix(head, report)
    values = trainer.validate(head)
    history = [_row(0, None, values)]
    first: Params = {k: v.detach().clone() for k, v in head.items()}
    best, best_epoch, best_key, bad = first, 0, _pooled(values, key), 0
    report({"event": "rank_epoch_end", **history[0], "best_epoch": 0})
    groups: list[dict[str, Any]] = [
        {"params": [v for v in head.values() if v.requires_grad and v.numel() > 16]},
        {  # the scalar mixing weights move ×10 faster
            "params": [v for v in head.values() if v.requires_grad and v.numel() <= 16],
            "lr": 10 * tc.rank_lr,
        },
    ]
    opt = torch.optim.Adam(groups, lr=tc.rank_lr)
    for epoch in range(1, tc.rank_epochs + 1):
        loss = trainer.epoch(head, opt, epoch)
        values = trainer.validate(head)
        history.append(_row(epoch, loss, values))
        if _pooled(values, key) > best_key:
            best_key, best_epoch, bad = _pooled(values, key), epoch, 0
            best = {k: v.detach().clone() for k, v in head.items()}
        else:
            bad += 1
        report({"event": "rank_epoch_end", **history[-1], "best_epoch": best_epoch})
        if bad >= tc.rank_patience:
            break
    if tc.rank_mix and best_epoch > 0:  # re-mixed, then kept only if it beats epoch 0
        trained = {k: v.clone() for k, v in best.items()}
        mixing = trainer.remix(trained, report)
        values = trainer.validate(trained)
        if _pooled(values, VALIDATION_SUPPORTS) > history[0]["val_ndcg@10"]:
            best, settings["mixing"] = trained, mixing
            history.append({**_row(best_epoch, None, values), "remixed": True})
        else:
            best, best_epoch = first, 0
    settings["kept"] = history[-1] if best_epoch > 0 and tc.rank_mix else history[best_epoch]
    return RankResult(best, best_epoch, history, settings)


__all__ = ["EASE_START_MIX", "RankResult", "train_ranking"]
