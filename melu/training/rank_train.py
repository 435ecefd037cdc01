"""Training the ranking head (``melu.model.ranking``) on top of the meta-trained rating part.

Each epoch draws fresh episodes from all training ratings (``training.episodes``: a random
support of 1..``rank_max_support`` ratings per training user); every other rating of the
user is a *target*. Per meta-batch the rating part adapts to each support with the one
``adapt()`` (first order, no graph: the rating part is fixed, so the rating error is
exactly the meta-trained model's), and the head is trained by the multinomial likelihood
of the targets over the catalog items seen in training (Mult-VAE's loss; support items
left out; targets rated below ``rank_threshold`` weigh ``rank_negative_weight``).
The head kept is the one with the best mean NDCG@10 of the validation users at supports
of 3, 5 and 10 (``melu.evaluation.topn``'s protocol), its start (epoch 0) included; test
users are never looked at. ``train.rank_start="ease"`` starts it as EASE^R alone (λ picked
on the same validation users), so the kept head is never worse there than EASE^R.
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
    chunks,
    topn_users,
)
from melu.evaluation.topn_model import ModelRanker
from melu.features import FeatureTables
from melu.model import ranking
from melu.model.estimator import Encoded, Params, PreferenceEstimator
from melu.model.maml import Examples, Lr
from melu.model.predict import rank_catalog
from melu.prepare import Prepared
from melu.training.episodes import episodes, hidden_ids
from melu.training.rank_ease import pick_ease, validation_ndcg

Progress = Callable[[dict[str, Any]], None]
VALIDATION_SUPPORTS = (3, 5, 10)


@dataclass
class RankResult:
    params: Params  # the head's parameters (rank.*) of the best validation epoch
    best_epoch: int
    history: list[dict[str, Any]]
    settings: dict[str, Any]  # what was chosen on the validation users before training


def _ranker(
    model: PreferenceEstimator, params: Mapping[str, Tensor], tables: FeatureTables,
    steps: int, lr: Lr, device: torch.device, network: Tensor,
) -> ModelRanker:  # fmt: skip
    """The model with the head as it stands, as a top-N ranker (the MLP's output cached)."""
    return ModelRanker(model, params, tables, steps=steps, lr=lr, device=device, network=network)


def network_table(
    model: PreferenceEstimator, params: Mapping[str, Tensor], prepared: Prepared,
    catalog: Encoded, device: torch.device, chunk: int = 256,
) -> Tensor:  # fmt: skip
    """The MLP's output (users, I) of every user row × catalog item (no graph): it does not
    depend on the fast parameters, so with the rating part fixed it is computed once."""
    tables = prepared.tables.to(device)
    out = []
    with torch.no_grad():
        for part in chunks(len(tables.user_ids), chunk):
            feats = {k: v[part] for k, v in tables.users.items()}
            user = model.encode_user(params, feats)
            if user.dim() == 1:
                user = user.new_zeros((part.stop - part.start, 0))
            out.append(model.network(params, Encoded(user, catalog.items, catalog.ids)))
    return torch.cat(out)


def _targets(
    prepared: Prepared, user_rows: Tensor, support_items: Tensor, support_mask: Tensor,
    threshold: float, negative: float, device: torch.device,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(T, I) target weights: each user's training ratings, relevant 1, others
    ``negative``, the support's items 0; and (T, I) bool: every item the user rated."""
    rows = prepared.train_ratings
    n_items = len(prepared.tables.item_ids)
    per_user = torch.full((len(prepared.tables.user_ids),), -1, dtype=torch.long)
    per_user[user_rows.long().cpu()] = torch.arange(len(user_rows))
    task = per_user[rows.user_rows.long()]
    keep = task >= 0
    weight = torch.where(rows.ratings >= threshold, 1.0, negative)
    out = torch.zeros(len(user_rows), n_items)
    out[task[keep], rows.item_rows.long()[keep]] = weight[keep]
    rated = torch.zeros(len(user_rows), n_items, dtype=torch.bool)
    rated[task[keep], rows.item_rows.long()[keep]] = True
    t = torch.arange(len(user_rows)).unsqueeze(1).expand_as(support_items)
    out[t[support_mask.cpu()], support_items.long().cpu()[support_mask.cpu()]] = 0.0
    return out.to(device), rated


def _loss(scores: Tensor, targets: Tensor, allowed: Tensor) -> Tensor:
    """Mean over tasks of −Σ_i t_i log softmax(s)_i / Σ_i t_i over ``allowed`` items."""
    logp = torch.log_softmax(scores.masked_fill(~allowed, -torch.inf), dim=-1)
    total = targets.sum(-1).clamp(min=1e-9)
    nll = -(targets * logp.masked_fill(~allowed, 0.0)).sum(-1) / total
    return nll[targets.sum(-1) > 0].mean()


REGULARISED = ("rank.item_item", "rank.item_factor", "rank.user.weight")


def _penalty(head: Mapping[str, Tensor]) -> Tensor:
    """Σ‖θ‖² of the head's weight matrices (not its biases or rating-level weights)."""
    return sum((head[k] ** 2).sum() for k in REGULARISED)  # type: ignore[return-value]


def train_ranking(
    config: Config,
    model: PreferenceEstimator,
    rating_params: Mapping[str, Tensor],
    prepared: Prepared,
    device: torch.device,
    lr: Lr,
    progress: Progress | None = None,
) -> RankResult:
    """Train the head on top of the fixed ``rating_params``; returns the best head."""
    report = progress or (lambda _e: None)
    tc, mc = config.train, config.model
    tables = prepared.tables.to(device)
    fixed = {k: v.detach().to(device) for k, v in rating_params.items()}
    field = model.id_field or ""
    ids = tables.items[field].long()
    shapes = model.rank_shapes()
    n_ids = shapes["rank.item_bias"][0]
    pop = torch.bincount(ids.cpu()[prepared.train_ratings.item_rows.long()], minlength=n_ids)
    start = ranking.init_head(shapes, pop, tc.seed)
    rated_ids = ids.cpu()[prepared.train_ratings.item_rows.long()]
    raters = prepared.train_ratings.user_rows.long()
    n_users = len(prepared.tables.user_ids)
    start["rank.cooccurrence"], start["rank.item_count"] = ranking.cooccurrence(
        rated_ids, raters, n_ids, n_users
    )
    protocol = TopNProtocol()
    val_users = [topn_users(prepared, "validation", n, protocol) for n in VALIDATION_SUPPORTS]
    gram = ranking.co_ratings(rated_ids, raters, n_ids, n_users)
    levels = shapes["rank.ease_level"][0]
    ease = pick_ease(gram, ids.cpu(), val_users, protocol.threshold, prepared.features, levels)
    lam, grid = ease.lam, ease.grid
    start["rank.ease"], start["rank.ease_weight"] = ease.prec, torch.tensor([ease.scale])
    start["rank.ease_level"] = ease.level_weight.clone()
    if tc.rank_start == "ease":  # start as EASE^R alone (top item +5 logits); learn the rest
        start["rank.ease_weight"] = torch.tensor([5.0 * ease.scale])
        start["rank.item_bias"] = 1e-3 * start["rank.item_bias"]  # popularity breaks ties
        start["rank.cooc_weight"] = torch.zeros_like(start["rank.cooc_weight"])
    report({"event": "rank_ease", "lambda": lam, "validation": grid})
    dtype = next(iter(fixed.values())).dtype  # the rating part's (float64 in some tests)
    head = {
        k: v.to(device=device, dtype=dtype).requires_grad_(k not in ranking.STATISTICS)
        for k, v in start.items()
    }
    groups: list[dict[str, Any]] = [
        {"params": [v for k, v in head.items() if v.requires_grad and v.numel() > 16]},
        {  # the scalar mixing weights move ×10 faster
            "params": [v for k, v in head.items() if v.requires_grad and v.numel() <= 16],
            "lr": 10 * tc.rank_lr,
        },
    ]
    opt = torch.optim.Adam(groups, lr=tc.rank_lr)
    seen = torch.as_tensor(prepared.catalog["n_ratings"].to_numpy() > 0, device=device)
    seen &= ~torch.from_numpy(prepared.catalog["is_new"].to_numpy(dtype=bool, copy=True)).to(device)
    catalog_all = ModelRanker(model, fixed, tables, steps=0, lr=lr, device=device).catalog
    network = network_table(model, fixed, prepared, catalog_all, device)
    steps = config.meta.inner_steps
    data = config.data.replace(max_support=min(config.data.max_support, tc.rank_max_support))
    best: Params = {k: v.detach().clone() for k, v in head.items()}
    with torch.no_grad():  # the start is a candidate too (epoch 0)
        start_ranker = _ranker(model, {**fixed, **head}, tables, steps, lr, device, network)
        best_score = validation_ndcg(start_ranker, val_users, protocol.threshold)
    history: list[dict[str, Any]] = [{"epoch": 0, "rank_loss": None, "val_ndcg@10": best_score}]
    best_epoch, bad = 0, 0
    report({"event": "rank_epoch_end", **history[0], "best_epoch": 0})
    for epoch in range(1, tc.rank_epochs + 1):
        seed = tc.seed * 1_000_003 + 7919 * epoch
        tasks = episodes(prepared.train_ratings, tables.user_ids.cpu(), data, seed)
        hidden = None
        if tc.hide_items > 0:
            hidden = hidden_ids(n_ids, tc.hide_items, seed, device)
        targets_all, rated_all = _targets(
            prepared, tasks.user_rows, tasks.support_items, tasks.support_mask,
            mc.rank_threshold, tc.rank_negative_weight, torch.device("cpu"),
        )  # fmt: skip
        order = torch.randperm(len(tasks), generator=torch.Generator().manual_seed(seed))
        total, count = 0.0, 0
        for batch in order.split(tc.meta_batch):
            users = tasks.user_rows[batch].long().to(device)
            s_items = tasks.support_items[batch].long().to(device)
            s_mask = tasks.support_mask[batch].to(device)
            feats = tables.gather(users, s_items)
            catalog = catalog_all
            if hidden is not None:
                feats = {**feats, field: torch.where(hidden[feats[field]], 0, feats[field])}
                catalog = catalog_all._replace(ids=torch.where(hidden[ids], 0, ids))
            support = Examples(feats, tasks.support_ratings[batch].float().to(device), s_mask)
            user_feats = {k: v[users] for k, v in tables.users.items()}
            rated = torch.zeros(len(batch), n_ids, device=device)
            rated[:, ids] = rated_all[batch].to(device=device, dtype=rated.dtype)
            rated[:, 0] = 0.0
            scores = rank_catalog(
                model, {**fixed, **head}, user_feats, support, catalog, steps=steps, lr=lr,
                network=network[users], rated=rated,
            )  # fmt: skip
            target = targets_all[batch].to(device)
            allowed = seen.unsqueeze(0).expand_as(scores).clone()
            t = torch.arange(len(batch), device=device).unsqueeze(1).expand_as(s_items)
            allowed[t[s_mask], s_items[s_mask]] = False
            loss = _loss(scores, target * allowed, allowed) + tc.rank_l2 * _penalty(head)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(batch), count + len(batch)
        ranker = _ranker(model, {**fixed, **head}, tables, steps, lr, device, network)
        with torch.no_grad():
            score = validation_ndcg(ranker, val_users, protocol.threshold)
        row = {"epoch": epoch, "rank_loss": total / max(count, 1), "val_ndcg@10": score}
        history.append(row)
        if score > best_score:
            best_score, best_epoch, bad = score, epoch, 0
            best = {k: v.detach().clone() for k, v in head.items()}
        else:
            bad += 1
        report({"event": "rank_epoch_end", **row, "best_epoch": best_epoch})
        if bad >= tc.rank_patience:
            break
    return RankResult(best, best_epoch, history, {"ease_lambda": lam, "ease_validation": grid})


__all__ = ["RankResult", "train_ranking"]
