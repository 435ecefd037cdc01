"""Training users as extra pick users: the ranking head's parts with each one left out.

The part weights are picked on ~94 validation users per ML-100K fold, and picks made on
fewer users rank held-out users worse (RESULTS.md, ninth pass). Training users are many
more, but every one of the head's statistics holds their ratings. ``LooRanker`` scores a
training user as a new user would be scored: the head with that user's ratings taken out
of every counted or solved part, exactly —

- popularity, co-occurrence and EASE^R: as the head's own training episodes do
  (``ranking.Bag.rated``: counts less the user's, Sherman–Morrison for EASE^R's inverse);
- the liked-target part B = S − P·diag(μ), S = P·XᵀY, P = (XᵀX + λI)⁻¹: with the user's
  rated row x and liked row l out, P' = P + yyᵀ/c (y = Px, c = 1 − xᵀy) and
  S' = S + y·zᵀ with z = (Mᵀy − l)/c (M = XᵀY), so a bag's score is
  Σ_j w_j S[j] + a·z − (Σ_j w_j P[j])·μ' − a·y·μ'/c with a = Σ_j w_j y_j and
  μ'_i = (S_ii + y_i z_i) / (P_ii + y_i²/c);
- RP³β's walk W[j, i] = d_j^−α·K[j, i] / d_i^β, K = Xᵀ·diag(d_u^−α)·X: with the user out,
  K' = K − x·xᵀ·d_v^−α and each degree less the user's own rating.

The adapted predicted rating cannot be left out (the rating part is fit on these users'
ratings): ``keep_rating`` False scores it 0 for them, so only validation users speak for
its weight. Study code (``studies/pick_rule.py`` rules with ``train_users``): test users
are never looked at, and nothing here is in the library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import Tensor

from melu.evaluation import topn
from melu.evaluation.topn import Supports, TopNUsers, chunks
from melu.evaluation.topn_model import SCORE_CHUNK, ModelRanker
from melu.model import ranking, ranking_stats
from melu.model.maml import Examples
from melu.model.predict import rank_catalog
from melu.prepare import Prepared

K = TypeVar("K")
TRAIN = "train"  # the role (and scenario) name training users are drawn under here


def allow_training_users(prepared: Prepared) -> None:
    """Let ``topn.topn_users(prepared, "train", ...)`` draw training users' supports and
    held-out items from every training rating (study only: patches the role table)."""
    topn.ROLE[TRAIN] = TRAIN  # type: ignore[index]
    prepared.user_ratings[TRAIN] = prepared.train_ratings


def _matching(stored: Tensor, solves: Mapping[K, Tensor]) -> tuple[K, float]:
    """The setting whose solve ``stored`` is a positive multiple of, and that multiple."""
    best: tuple[float, K, float] | None = None
    for setting, solve in solves.items():
        scale = float((stored * solve).sum() / (solve * solve).sum().clamp(min=1e-30))
        err = float((stored - scale * solve).abs().max() / stored.abs().max().clamp(min=1e-30))
        if best is None or err < best[0]:
            best = (err, setting, scale)
    assert best is not None and best[0] < 1e-4, f"no solve matches the stored part ({best})"
    return best[1], best[2]


def joined(a: TopNUsers, b: TopNUsers) -> TopNUsers:
    """The users of ``a`` then those of ``b`` (the same support size and candidates) as one
    set, held-out rows padded to the wider."""

    def pad(x: Tensor, width: int) -> Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]))

    width = max(a.heldout_items.shape[1], b.heldout_items.shape[1])
    sa, sb = a.supports, b.supports
    supports = Supports(*(torch.cat([getattr(sa, f), getattr(sb, f)]) for f in
                          ("user_rows", "items", "ratings", "mask")))  # fmt: skip
    return dataclasses.replace(
        a, supports=supports,
        heldout_items=torch.cat([pad(a.heldout_items, width), pad(b.heldout_items, width)]),
        heldout_ratings=torch.cat([pad(a.heldout_ratings, width), pad(b.heldout_ratings, width)]),
        heldout_mask=torch.cat([pad(a.heldout_mask, width), pad(b.heldout_mask, width)]),
        user_ids=torch.cat([a.user_ids, b.user_ids]),
    )  # fmt: skip


class LooRanker:
    """Ranks training users with each one left out of the head's statistics (module doc).

    Wraps ``ranker`` (its ``params`` are the wrapped ranker's, read and written through).
    """

    def __init__(self, ranker: ModelRanker, prepared: Prepared, keep_rating: bool) -> None:
        self.inner, self.keep_rating = ranker, keep_rating
        p = ranker.params
        n_ids = len(p["rank.item_count"])
        ids = ranker.catalog.ids.cpu()  # (I,) each catalog row's id index
        rows = prepared.train_ratings
        rated_ids = ids[rows.item_rows.long()]
        raters = rows.user_rows.long()
        n_users = len(prepared.tables.user_ids)
        self.x = ranking_stats.rated_ids(rated_ids, raters, n_ids, n_users)  # (users, V)
        liked = rows.ratings >= topn.TopNProtocol().threshold
        self.y = torch.zeros_like(self.x)
        self.y[raters[liked], rated_ids[liked]] = 1.0
        self.y[:, 0] = 0.0
        gram = self.x.T @ self.x
        self.m = self.x.T @ self.y  # XᵀY
        solves = {
            lam: ranking_stats.liked_weights(gram, self.m, lam)
            for lam in ranking_stats.LIKED_LAMBDAS
        }
        self.lam, self.liked_scale = _matching(p["rank.liked"].cpu(), solves)
        self.prec = ranking_stats.ease_precision(gram, self.lam)  # P of the matched λ
        self.s = self.prec @ self.m
        walks = {s: ranking_stats.walk_weights(self.x, *s) for s in ranking_stats.WALK_SETTINGS}
        (self.alpha, self.beta), self.walk_scale = _matching(p["rank.walk"].cpu(), walks)
        self.d_item = self.x.sum(0)  # (V,)
        self.d_user = self.x.sum(1)  # (users,)
        inv = self.d_user.clamp(min=1.0).pow(-self.alpha)
        self.k = (self.x.T * inv) @ self.x  # (V, V): Σ_u x_uj x_ui d_u^-α
        self.ids = ids

    @property
    def params(self) -> dict[str, Tensor]:
        return self.inner.params  # type: ignore[return-value]

    @params.setter
    def params(self, value: dict[str, Tensor]) -> None:
        self.inner.params = value

    def _liked(self, bag: ranking.Bag, x: Tensor, liked: Tensor) -> Tensor:
        """(T, V) Σ_j w_l(r_j)·B'[j, :], B' the liked-target weights without the users."""
        w = self.params["rank.liked_level"].cpu()[bag.levels] * (bag.mask & (bag.ids != 0))
        y = x @ self.prec  # (T, V)
        c = (1.0 - (x * y).sum(1, keepdim=True)).clamp(min=1e-6)  # (T, 1)
        z = (y @ self.m - liked) / c
        mu = (self.s.diagonal() + y * z) / (self.prec.diagonal() + y * y / c)
        first = (w.unsqueeze(-1) * self.s[bag.ids]).sum(1)
        a = (w * y.gather(1, bag.ids)).sum(1, keepdim=True)
        third = (w.unsqueeze(-1) * self.prec[bag.ids]).sum(1)
        return first + a * z - third * mu - a * y * mu / c

    def _walk(self, bag: ranking.Bag, x: Tensor, d_user: Tensor) -> Tensor:
        """(T, V) Σ_j w_w(r_j)·W'[j, :], W' RP³β's walk weights without the users."""
        w = self.params["rank.walk_level"].cpu()[bag.levels] * (bag.mask & (bag.ids != 0))
        left = self.d_item[bag.ids] - x.gather(1, bag.ids)  # (T, L) without the user's own
        d_j = left.clamp(min=1.0).pow(-self.alpha)
        rows = (
            self.k[bag.ids] - x.unsqueeze(1) * d_user.clamp(min=1.0).pow(-self.alpha)[:, None, None]
        )  # (T, L, V)
        per = (w * d_j).unsqueeze(-1) * rows
        per = per.scatter(-1, bag.ids.unsqueeze(-1), 0.0)  # W's diagonal is 0
        d_i = (self.d_item - x).clamp(min=1.0).pow(self.beta)  # (T, V)
        return per.sum(1) / d_i

    def scores(self, supports: Supports) -> Tensor:
        """(C, I) the head's scores of every catalog item: training users each left out of
        the statistics, anyone else (a validation user: no training ratings) as served."""
        train = self.x[supports.user_rows.long()].sum(1) > 0  # (C,)
        if bool(train.all()):
            return self._left_out(supports)
        if not bool(train.any()):
            return self.inner.scores(supports).cpu()
        out = torch.empty(len(supports), len(self.ids))
        out[~train] = self.inner.scores(supports.select(~train)).cpu()
        out[train] = self._left_out(supports.select(train))
        return out

    def _left_out(self, supports: Supports) -> Tensor:
        """(C, I) ``scores`` of training users only."""
        r = self.inner
        params = dict(r.params)
        if not self.keep_rating:
            params["rank.rating_weight"] = torch.zeros_like(params["rank.rating_weight"])
        out = []
        for part in chunks(len(supports), SCORE_CHUNK):
            rows = supports.user_rows[part].long()
            items = supports.items[part].long()
            support = Examples(
                r.tables.gather(rows, items), supports.ratings[part].float(), supports.mask[part]
            )
            users = {k: v[rows] for k, v in r.tables.users.items()}
            x, liked = self.x[rows], self.y[rows]
            # popularity, co-occurrence and EASE^R left out (``rated``); liked and walk score 0
            with torch.inference_mode(False), torch.no_grad():
                base = rank_catalog(
                    r.model, params, users, support, r.items, steps=r.steps, lr=r.lr,
                    fast=r.fast, rated=x,
                )  # fmt: skip
            bag = r.model.bag(self.ids[items], support.ratings, support.mask)
            liked_part = self._liked(bag, x, liked) * self.liked_scale
            walk_part = self._walk(bag, x, self.d_user[rows]) * self.walk_scale
            known = (self.ids != 0).float()
            extra = (
                ranking.bucket_weight(params["rank.liked_weight"].cpu(), bag) * liked_part
                + ranking.bucket_weight(params["rank.walk_weight"].cpu(), bag) * walk_part
            )[:, self.ids] * known
            out.append(base.cpu() + extra)
        return torch.cat(out)


def check(model_dir: str, data_dir: str, users: int = 3) -> None:
    """Prints, for a few training users of ``model_dir``'s data, the largest difference
    between the left-out liked-target and walk scores and the same parts solved again from
    scratch without the user; and, with nobody left out, against the bundle's own parts."""
    from melu.bundle import load_bundle
    from melu.prepare import prepare

    bundle = load_bundle(model_dir)
    prepared = prepare(bundle.config.data, data_dir)
    ranker = ModelRanker.from_bundle(bundle, prepared.tables)
    allow_training_users(prepared)
    loo = LooRanker(ranker, prepared, keep_rating=True)
    drawn = topn.topn_users(prepared, TRAIN, 5)  # type: ignore[arg-type]
    p = ranker.params
    for t in range(users):
        row = int(drawn.supports.user_rows[t])
        items = drawn.supports.items[t : t + 1].long()
        bag = ranker.model.bag(loo.ids[items], drawn.supports.ratings[t : t + 1].float(),
                               drawn.supports.mask[t : t + 1])  # fmt: skip
        others = torch.ones(len(loo.x), dtype=torch.bool)
        others[row] = False
        x, y = loo.x[others], loo.y[others]
        for name, solved, mine in (
            ("liked", ranking_stats.liked_weights(x.T @ x, x.T @ y, loo.lam),
             loo._liked(bag, loo.x[row : row + 1], loo.y[row : row + 1])),
            ("walk", ranking_stats.walk_weights(x, loo.alpha, loo.beta),
             loo._walk(bag, loo.x[row : row + 1], loo.d_user[row : row + 1])),
        ):  # fmt: skip
            w = p[f"rank.{name}_level"][bag.levels[0]] * (bag.mask[0] & (bag.ids[0] != 0))
            again = (w.unsqueeze(-1) * solved[bag.ids[0]]).sum(0)
            out = torch.ones_like(again, dtype=torch.bool)
            out[bag.ids[0]] = False
            out[0] = False
            err = float((again - mine[0])[out].abs().max() / again[out].abs().max())
            print(f"user row {row}: {name} left out vs solved again, relative max diff {err:.1e}")
        nobody = torch.zeros_like(loo.x[:1])
        served = (w.unsqueeze(-1) * p["rank.walk"][bag.ids[0]]).sum(0)
        mine_w = loo._walk(bag, nobody, torch.zeros(1))[0] * loo.walk_scale
        err = float((served - mine_w)[out].abs().max() / served[out].abs().max())
        print(f"user row {row}: walk, nobody left out vs the bundle's, relative max diff {err:.1e}")


if __name__ == "__main__":
    import argparse
    import os

    parser = argparse.ArgumentParser(description="check the left-out parts against new solves")
    parser.add_argument("--model", required=True, help="a model folder (a K-fold fold's)")
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    args = parser.parse_args()
    check(args.model, args.data_dir)
