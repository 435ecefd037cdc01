"""One epoch of the ranking head's training, and what every epoch shares.

``HeadTrainer`` holds the fixed rating part, the catalog encoded once and the MLP's output
of every user row × item (with the rating part fixed it does not depend on the fast
parameters), and trains the head on fresh episodes (``training.episodes``) by the
multinomial likelihood of each episode's held-out items over the catalog items seen in
training (Mult-VAE's loss; support items left out; targets rated below ``rank_threshold``
weigh ``rank_negative_weight``). Per meta-batch the rating part adapts to each support with
the one ``adapt()`` (first order, no graph), so the rating error is the meta-trained one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from melu.config import Config
from melu.evaluation.topn import TopNProtocol, TopNUsers, chunks, topn_users, without_support
from melu.evaluation.topn_model import ModelRanker
from melu.features import FeatureTables
from melu.model.estimator import Encoded, Params, PreferenceEstimator
from melu.model.maml import Examples, Lr
from melu.model.predict import rank_catalog
from melu.prepare import Prepared
from melu.training.episodes import episodes, hidden_ids
from melu.training.rank_ease import validation_ndcgs
from melu.training.rank_mix import MIX_SIZES, mix_draws, pick_mixing

Progress = Callable[[dict[str, Any]], None]


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


def _empty_some(mask: Tensor, share: float, seed: int) -> Tensor:
    """``mask`` (T, L) with a seeded random ``share`` of its tasks' supports emptied, so the
    head also learns the list of a user with no ratings yet."""
    drop = torch.rand(len(mask), generator=torch.Generator().manual_seed(seed)) < share
    return mask & ~drop.unsqueeze(1)


class HeadTrainer:
    """What every epoch of head training needs: the fixed rating part, the catalog encoded
    once, the MLP's output of every user row × item (it does not depend on the fast
    parameters), and the validation users."""

    def __init__(self, config: Config, model: PreferenceEstimator,
                 rating_params: Mapping[str, Tensor], prepared: Prepared,
                 device: torch.device, lr: Lr, val_users: list[TopNUsers]) -> None:  # fmt: skip
        self.config, self.model, self.prepared, self.device, self.lr = (
            config,
            model,
            prepared,
            device,
            lr,
        )
        self.tables = prepared.tables.to(device)
        self.fixed = {k: v.detach().to(device) for k, v in rating_params.items()}
        self.field = model.id_field or ""
        self.ids = self.tables.items[self.field].long()
        self.n_ids = model.rank_shapes()["rank.item_bias"][0]
        catalog = prepared.catalog
        seen = torch.as_tensor(catalog["n_ratings"].to_numpy() > 0, device=device)
        new = torch.from_numpy(catalog["is_new"].to_numpy(dtype=bool, copy=True)).to(device)
        self.seen = seen & ~new
        ranker = ModelRanker(model, self.fixed, self.tables, steps=0, lr=lr, device=device)
        self.catalog = ranker.catalog
        self.network = network_table(model, self.fixed, prepared, self.catalog, device)
        self.steps = config.meta.inner_steps
        self.val_users = val_users
        self.mix_users: list[list[TopNUsers]] | None = None  # built on the first remix
        self.threshold = TopNProtocol().threshold  # relevant: held-out rating at least this

    def ranker(self, head: Mapping[str, Tensor]) -> ModelRanker:
        """The model with ``head`` as a top-N ranker (the MLP's output cached)."""
        return _ranker(self.model, {**self.fixed, **head}, self.tables, self.steps, self.lr,
                       self.device, self.network)  # fmt: skip

    def validate(self, head: Mapping[str, Tensor]) -> list[Tensor]:
        """Per-user validation NDCG@10 of each of ``VALIDATION_SUPPORTS``."""
        with torch.no_grad():
            return validation_ndcgs(self.ranker(head), self.val_users, self.threshold)

    def remix(self, head: Params, report: Progress) -> dict[str, list[float]]:
        """Pick ``head``'s part weights per support-size bucket on the validation users
        (``train.rank_mix_draws`` seeded support draws of the bucket's sizes,
        ``train.rank_mix_sizes``), in place."""
        ranker = self.ranker(head)
        tc = self.config.train
        if self.mix_users is None:
            known = {u.n: u for u in self.val_users}  # seed 0 (the protocol's)

            def draw(n: int, seed: int) -> TopNUsers:
                if seed == 0 and n in known:
                    return known[n]
                return topn_users(self.prepared, "validation", n, TopNProtocol(seed=seed))

            self.mix_users = []
            for sizes in MIX_SIZES[tc.rank_mix_sizes]:
                got = [draw(n, seed) for n, seed in mix_draws(sizes, tc.rank_mix_draws)]
                self.mix_users.append([u for u in got if len(u)] or got[:1])
        choice = pick_mixing(
            ranker, ranker.params, self.mix_users, self.threshold, tc.rank_max_shared,
            tc.rank_mix_metric, tc.rank_shared_from, tc.rank_mix_passes,
            keep_shared=tc.rank_keep_shared, bags=tc.rank_mix_bags, seed=tc.seed,
            walk_blend=tc.rank_mix_walk_blend,
        )  # fmt: skip
        with torch.no_grad():
            for k, v in choice.weights.items():
                head[k].copy_(v)
        report({
            "event": "rank_mix", "before": choice.before, "after": choice.after,
            "recall_before": choice.recall_before, "recall_after": choice.recall_after,
        })  # fmt: skip
        return {k: v.tolist() for k, v in choice.weights.items()}

    def epoch(self, head: Params, opt: torch.optim.Optimizer, epoch: int) -> float:
        """One epoch of fresh episodes, the head trained by the targets' likelihood; the
        mean training loss."""
        tc, mc = self.config.train, self.config.model
        data = self.config.data
        data = data.replace(max_support=min(data.max_support, tc.rank_max_support))
        seed = tc.seed * 1_000_003 + 7919 * epoch
        tasks = episodes(self.prepared.train_ratings, self.tables.user_ids.cpu(), data, seed)
        emptied = _empty_some(tasks.support_mask, tc.rank_empty_share, seed)
        tasks = dataclasses.replace(tasks, support_mask=emptied)
        hidden = (
            hidden_ids(self.n_ids, tc.hide_items, seed, self.device) if tc.hide_items > 0 else None
        )
        targets_all, rated_all = _targets(
            self.prepared, tasks.user_rows, tasks.support_items, tasks.support_mask,
            mc.rank_threshold, tc.rank_negative_weight, torch.device("cpu"),
        )  # fmt: skip
        order = torch.randperm(len(tasks), generator=torch.Generator().manual_seed(seed))
        total, count = 0.0, 0
        for batch in order.split(tc.meta_batch):
            loss = self._step(head, tasks, batch, targets_all, rated_all, hidden)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(batch), count + len(batch)
        return total / max(count, 1)

    def _step(self, head: Params, tasks: Any, batch: Tensor, targets_all: Tensor,
              rated_all: Tensor, hidden: Tensor | None) -> Tensor:  # fmt: skip
        """The loss of one meta-batch of episodes."""
        device, field, ids = self.device, self.field, self.ids
        users = tasks.user_rows[batch].long().to(device)
        s_items = tasks.support_items[batch].long().to(device)
        s_mask = tasks.support_mask[batch].to(device)
        feats = self.tables.gather(users, s_items)
        catalog = self.catalog
        if hidden is not None:
            feats = {**feats, field: torch.where(hidden[feats[field]], 0, feats[field])}
            catalog = catalog._replace(ids=torch.where(hidden[ids], 0, ids))
        support = Examples(feats, tasks.support_ratings[batch].float().to(device), s_mask)
        user_feats = {k: v[users] for k, v in self.tables.users.items()}
        rated = torch.zeros(len(batch), self.n_ids, device=device)
        rated[:, ids] = rated_all[batch].to(device=device, dtype=rated.dtype)
        rated[:, 0] = 0.0
        scores = rank_catalog(
            self.model, {**self.fixed, **head}, user_feats, support, catalog,
            steps=self.steps, lr=self.lr, network=self.network[users], rated=rated,
        )  # fmt: skip
        target = targets_all[batch].to(device)
        allowed = without_support(self.seen, s_items, s_mask)
        l2 = self.config.train.rank_l2
        return _loss(scores, target * allowed, allowed) + l2 * _penalty(head)


__all__ = ["HeadTrainer", "network_table"]
