"""Frozen configuration dataclasses, saved as plain JSON and rebuilt with ``from_dict``.

Every threshold of the data protocol (``DataConfig``, in ``melu.config_data``), every model
size and every optimiser setting is a field here, declared once: its type (a ``Literal``
lists the choices), its default, its help text (``field(metadata={"help": ...})``, which
the CLI turns into ``--help``) and its checks (``_validate``). Construction validates (types, choices, ranges) and raises
:class:`ConfigError` naming the field as ``section.name``; nothing reads a global option dict.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from melu.config_data import DataConfig, MovieLensName
from melu.config_fields import _Config, describe, field_types, help_of, setting
from melu.errors import ConfigError

# DataConfig (and the data set names) live in melu.config_data; import them from here too
__all__ = ["Config", "DataConfig", "MetaConfig", "ModelConfig", "MovieLensName", "TrainConfig",
           "describe", "field_types", "help_of", "setting"]  # fmt: skip


FastGroup = Literal["mlp", "head", "all", "user", "user_mlp"]
Episodes = Literal["tasks", "all"]
Amp = Literal["none", "bf16"]
RankStart = Literal["ease", "popularity"]
RankTrained = Literal["all", "mixing"]
RankMixMetric = Literal["ndcg", "ndcg+recall"]
RankMixSizes = Literal["spread", "one"]


@dataclass(frozen=True)
class ModelConfig(_Config):
    """The preference estimator's sizes (MeLU's by default) and which parameters adapt."""

    SECTION: ClassVar[str] = "model"

    embedding_dim: int = setting(32, "Embedding size of every feature field.")
    hidden: tuple[int, ...] = setting((64, 64), "Hidden layer widths of the MLP, comma-separated.")
    fast_params: FastGroup = setting(
        "user",
        "Adapted per user: mlp (MeLU), head, all, user (bias + factor) or user_mlp.",
    )
    factors: int = setting(
        16,
        "k > 0 adds b_i + b_u + p_u·q_i to the network (0: MeLU's network alone).",
    )
    anchor: bool = setting(
        True, "Inner loss + λ‖θ − θ₀‖² on the user's bias and factor (ridge around the prior)."
    )
    support_prior: float = setting(
        5.0,
        "λ of the inner loss SSE / (n + λ) (0: MeLU's mean squared error).",
    )

    ranking: bool = setting(
        True,
        "Add the ranking head (what orders recommendations: popularity, the support as a "
        "rating-weighted bag scored by a learned item–item matrix, and the adapted predicted "
        "rating); off: rank by predicted rating. Needs factors > 0 and item ids.",
    )
    rank_factors: int = setting(
        0, "Rank of the ranking head's user × item factors (0: none; they overfit ML-100K)."
    )
    rank_threshold: float = setting(
        4.0, "Ratings at or above this are what the ranking head learns to put first."
    )

    def _validate(self) -> None:
        # upper bounds keep a hand-edited bundle from exhausting the machine at load
        self._require(1 <= self.embedding_dim <= 1024, "embedding_dim", "must be in 1..1024")
        self._require(1 <= len(self.hidden) <= 8, "hidden", "must have 1..8 layers")
        self._require(all(1 <= h <= 4096 for h in self.hidden), "hidden", "sizes must be 1..4096")
        self._require(0 <= self.factors <= 256, "factors", "must be in 0..256")
        self._require(0 <= self.support_prior <= 1e4, "support_prior", "must be in 0..10000")
        self._require(0 <= self.rank_factors <= 512, "rank_factors", "must be in 0..512")
        self._require(
            self.factors > 0 or not self.fast_params.startswith("user"),
            "fast_params",
            "user / user_mlp need --factors > 0",
        )


@dataclass(frozen=True)
class MetaConfig(_Config):
    """The inner loop. See ``melu.model.maml`` for why the defaults differ from MeLU's."""

    SECTION: ClassVar[str] = "meta"

    inner_steps: int = setting(3, "Inner-loop gradient steps on a user's support.")
    inner_lr: float = setting(0.5, "Inner-loop learning rate.")
    first_order: bool = setting(False, "FOMAML: drop the second-order terms.")
    learn_inner_lr: bool = setting(
        False, "Meta-SGD: learn one inner rate per fast parameter element."
    )

    def _validate(self) -> None:
        # at most 100 steps: a request adapts this many times, so more would hang serving
        self._require(0 <= self.inner_steps <= 100, "inner_steps", "must be in 0..100")
        self._require(0 < self.inner_lr < math.inf, "inner_lr", "must be > 0 and finite")


@dataclass(frozen=True)
class TrainConfig(_Config):
    """The outer loop."""

    SECTION: ClassVar[str] = "train"

    epochs: int = setting(30, "Most training epochs (early stopping may end sooner).")
    meta_batch: int = setting(32, "Tasks per outer step.")
    outer_lr: float = setting(1e-3, "Adam learning rate of the outer loop.")
    weight_decay: float = setting(0.0, "Adam weight decay.")
    grad_clip: float = setting(1.0, "Clip the meta-gradient's norm to this.")
    patience: int = setting(5, "Epochs without a better validation MAE before stopping.")
    seed: int = setting(0, "Training seed (initial weights, meta-batch order).")
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda or cuda:N.")
    amp: Amp = setting("none", "none, or bf16: autocast the forward pass.")
    episodes: Episodes = setting(
        "all",
        "Meta-train on the fixed tasks of 13..100-rating users (tasks, MeLU) or on fresh "
        "episodes from all training users' ratings each epoch (all: random query, support "
        "of 1..max_support ratings).",
    )
    hide_items: float = setting(
        0.2, "Share of items whose id is hidden in each meta-batch (trains the new-item path)."
    )
    max_tasks_per_epoch: int | None = setting(
        None, "Cap on training tasks per epoch (default: all)."
    )
    rank_epochs: int = setting(
        0,
        "Most epochs of likelihood training of the ranking head after its part weights are "
        "picked (0: none; in 10 of 10 K-fold runs no epoch beat the picked weights on "
        "validation users).",
    )
    rank_mix: bool = setting(
        True,
        "Pick the ranking head's part weights (popularity, predicted rating, co-occurrence) "
        "per support size on validation users before its training.",
    )
    rank_mix_metric: RankMixMetric = setting(
        "ndcg+recall",
        "What the part weights are picked by on validation users: ndcg (NDCG@10) or "
        "ndcg+recall (NDCG@10 and Recall@10, each relative to the start's, summed).",
    )
    rank_mix_draws: int = setting(
        4,
        "Seeded draws of each validation user's support the part weights of a support-size "
        "bucket are picked on (pooled; at least one per size of rank_mix_sizes). 4 ranked "
        "ML-100K's held-out validation users no worse than 2 at any size and a little better "
        "at 1-5 ratings; 8 ranked them worse at 10-20 (RESULTS.md, ninth pass).",
    )
    rank_mix_sizes: RankMixSizes = setting(
        "spread",
        "The validation support sizes each bucket's part weights are picked on: spread "
        "(sizes across the bucket: 1; 2, 3; 4, 5, 7; 8, 10, 15, 20) or one (1, 3, 5, 10).",
    )
    rank_mix_passes: int = setting(
        2,
        "How many times each support-size bucket's part weights are searched, each from the "
        "last search's mix (the blend of EASE^R and the liked-target part, then popularity, "
        "predicted rating and co-occurrence, then the rest).",
    )
    rank_mix_bags: int = setting(
        1,
        "Bootstrap resamples of the validation users each support-size bucket's part weights "
        "are picked on, the picks averaged (bagging; each bag costs one more search). 1: one "
        "pick on all of them, the default: 8 bags ranked ML-100K's held-out validation users "
        "no better (RESULTS.md, eighth pass).",
    )
    rank_mix_walk_blend: bool = setting(
        True,
        "Search RP³β's walk weight inside the blend of the closed-form item-item parts "
        "(EASE^R x the liked-target part x the walk, so each part alone is among the mixes "
        "tried), not only after the grid (off: the seventh pass's search).",
    )
    rank_max_shared: float = setting(
        0.4,
        "Most mean share of a validation user's top-10 that may also be in their "
        "no-ratings list when the part weights are picked, for users of rank_shared_from "
        "ratings or more (1: no limit; 0.4 from 4 ratings costs ML-100K's held-out "
        "validation users nothing and ML-1M's a little NDCG@10, lower caps cost more: "
        "RESULTS.md).",
    )
    rank_shared_from: int = setting(
        4,
        "The fewest ratings a user has for rank_max_shared to limit their list (their "
        "support-size bucket's weights; 1: every user with ratings).",
    )
    rank_keep_shared: int = setting(
        10,
        "Most items of a user's no-ratings list (the 10 they would see with no ratings) "
        "that may stay in their top 10 once they have rank_shared_from ratings or more: the "
        "rest are moved below every other item (the head's personalisation rule, also "
        "applied while the part weights are picked; 10: off, the default). 3 holds lists "
        "to <= 30% shared, at a price in NDCG@10 and Recall@10 on validation and test users "
        "of ML-100K (5 ratings) and ML-1M (5-20 ratings): RESULTS.md, sixth pass.",
    )
    rank_neighbours: bool = setting(
        True,
        "Give the ranking head a user-kNN part: the training users who rated what the "
        "user rated vote for what they liked, each by (overlap / sqrt(their count))^alpha, "
        "alpha and the number of neighbours picked on validation users, its weight per "
        "support size picked with the other parts' (off: the head of the ninth pass).",
    )
    rank_lr: float = setting(3e-3, "Adam learning rate of the ranking head.")
    rank_start: RankStart = setting(
        "ease",
        "Where the ranking head starts: ease (EASE^R alone, λ picked on validation users) or "
        "popularity (log training counts).",
    )
    rank_trained: RankTrained = setting(
        "all",
        "Which of the ranking head's parameters training moves: all, or mixing (only the "
        "weights of its parts and of each rating level; its item-item matrix and biases stay).",
    )
    rank_empty_share: float = setting(
        0.0, "Share of ranking episodes whose support is emptied (the no-ratings list)."
    )
    rank_l2: float = setting(0.0, "L2 penalty of the ranking head's weight matrices.")
    rank_patience: int = setting(5, "Ranking epochs without a better validation NDCG@10.")
    rank_max_support: int = setting(
        30, "Largest support of a ranking episode (supports are 1..this, uniformly)."
    )
    rank_negative_weight: float = setting(
        0.0,
        "Weight, as a ranking target, of a held-out rating below the model's rank_threshold "
        "(1: every rated item is a target; 0: only the ones the user liked).",
    )

    def _validate(self) -> None:
        need = self._require
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.meta_batch >= 1, "meta_batch", "must be >= 1")
        need(0 < self.outer_lr < math.inf, "outer_lr", "must be > 0 and finite")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.grad_clip > 0, "grad_clip", "must be > 0")
        need(0 <= self.hide_items < 1, "hide_items", "must be in [0, 1)")
        need(self.patience >= 1, "patience", "must be >= 1")
        need(self.rank_epochs >= 0, "rank_epochs", "must be >= 0")
        need(0 < self.rank_lr < math.inf, "rank_lr", "must be > 0 and finite")
        need(self.rank_patience >= 1, "rank_patience", "must be >= 1")
        need(0 <= self.rank_empty_share < 1, "rank_empty_share", "must be in [0, 1)")
        need(self.rank_mix_draws >= 1, "rank_mix_draws", "must be >= 1")
        need(self.rank_mix_passes >= 1, "rank_mix_passes", "must be >= 1")
        need(1 <= self.rank_mix_bags <= 1000, "rank_mix_bags", "must be in 1..1000")
        need(0 < self.rank_max_shared <= 1, "rank_max_shared", "must be in (0, 1]")
        need(self.rank_shared_from >= 1, "rank_shared_from", "must be >= 1")
        need(0 <= self.rank_keep_shared <= 10, "rank_keep_shared", "must be in 0..10")
        need(0 <= self.rank_l2 < math.inf, "rank_l2", "must be >= 0 and finite")
        need(self.rank_max_support >= 1, "rank_max_support", "must be >= 1")
        need(0 <= self.rank_negative_weight <= 1, "rank_negative_weight", "must be in [0, 1]")
        need(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            "device",
            f"must be one of auto, cpu, cuda, cuda:N (got {self.device!r})",
        )
        need(
            self.max_tasks_per_epoch is None or self.max_tasks_per_epoch >= 1,
            "max_tasks_per_epoch",
            "must be >= 1",
        )


SECTIONS: dict[str, type[_Config]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "meta": MetaConfig,
    "train": TrainConfig,
}


@dataclass(frozen=True)
class Config(_Config):
    """All configs together, as saved in a bundle's ``config.json``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:  # type: ignore[override]
        if not isinstance(data, dict):
            raise ConfigError("config: expected an object")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"config: unknown section(s) {unknown}")
        sections: dict[str, Any] = {k: c.from_dict(data.get(k, {})) for k, c in SECTIONS.items()}
        return cls(**sections)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> Config:
        """A config read from a bundle or checkpoint: a field the file does not have takes
        its ``LEGACY`` value (what the file meant when it was written), not today's default."""
        if not isinstance(data, dict):
            raise ConfigError("config: expected an object")
        filled = {
            k: {**LEGACY.get(k, {}), **v} if isinstance(v := data.get(k, {}), dict) else v
            for k in {*SECTIONS, *data}
        }
        return cls.from_dict(filled)

    @classmethod
    def melu(cls) -> Config:
        """MeLU's own recipe (the network alone, its MLP adapted, fixed 13..100-rating
        tasks), as this project trained it before the collaborative part was the default."""
        return cls.from_saved({})


# Fields added after bundles and checkpoints were first written, with the value that
# reproduces what a file without them meant (MeLU's recipe). ``Config.from_saved`` fills a
# missing field from here, never from today's defaults.
LEGACY: dict[str, dict[str, Any]] = {
    "data": {"item_stats": "tasks", "folds": 0, "fold": 0},
    "model": {
        "fast_params": "mlp",
        "factors": 0,
        "support_prior": 0.0,
        "anchor": False,
        "ranking": False,
        "rank_factors": 0,
    },
    "meta": {"inner_steps": 5, "inner_lr": 0.05},
    "train": {"episodes": "tasks", "hide_items": 0.0},
}
