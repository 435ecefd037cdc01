"""Frozen configuration dataclasses, saved as plain JSON and rebuilt with ``from_dict``.

Every threshold of the data protocol, every model size and every optimiser setting is a
field here; nothing reads a global option dict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from melu.errors import ConfigError

T = TypeVar("T")

FastGroup = Literal["mlp", "head", "all"]
UserSplit = Literal["time", "random"]
QueryOrder = Literal["random", "time"]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a JSON value to the annotated type, or raise ConfigError naming the field."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        _check(
            value in typing.get_args(tp), f"{name}: {value!r} is not one of {typing.get_args(tp)}"
        )
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, args[0], value)
    if origin is tuple:
        _check(isinstance(value, list | tuple), f"{name}: expected a list, got {value!r}")
        (elem, *_rest) = typing.get_args(tp)
        return tuple(_coerce(name, elem, v) for v in value)
    if tp is bool:
        _check(isinstance(value, bool), f"{name}: expected true/false, got {value!r}")
        return value
    if tp is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            f"{name}: expected an integer, got {value!r}",
        )
        return value
    if tp is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            f"{name}: expected a number, got {value!r}",
        )
        return float(value)
    if tp is str:
        _check(isinstance(value, str), f"{name}: expected a string, got {value!r}")
        return value
    return value


class _Config:
    """Mixin: ``to_dict`` / ``from_dict`` with type checks, and ``replace``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}")
        kwargs = {k: _coerce(f"{cls.__name__}.{k}", hints[k], v) for k, v in data.items()}
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class DataConfig(_Config):
    """The task protocol (DESIGN.md, Scenarios). Defaults follow MeLU on MovieLens."""

    dataset: str = "ml-100k"
    new_item_fraction: float = 0.2  # newest share of items (by release date) that are "new"
    user_split: UserSplit = "time"  # order users by first rating, or shuffle with `seed`
    train_fraction: float = 0.7
    validation_fraction: float = 0.1  # test users are the rest (the newest sign-ups)
    min_ratings: int = 13  # a user needs this many ratings in the scenario's items ...
    max_ratings: int = 100  # ... and at most this many, to form a task
    query_size: int = 10
    max_support: int = 90
    min_support: int = 3
    query_order: QueryOrder = "random"  # random query (seeded) or each user's last ratings
    zip_prefix: int = 2  # digits of the zip code kept as a feature (0 drops the field)
    item_id_feature: bool = True  # embed the item id itself (new items: "unknown")
    item_id_min_ratings: int = 5  # ... only for items with this many training ratings
    use_extra_item_info: bool = True  # ml-1m: MPAA rate, directors, actors (MeLU's file)
    seed: int = 0
    folds: int = 0  # K > 1: K-fold over users (random split); test users = fold `fold`
    fold: int = 0  # ... validation users drawn from the other folds, the rest train

    def __post_init__(self) -> None:
        _check(0.0 <= self.new_item_fraction < 1.0, "new_item_fraction must be in [0, 1)")
        _check(0 < self.train_fraction < 1, "train_fraction must be in (0, 1)")
        _check(0 <= self.validation_fraction < 1, "validation_fraction must be in [0, 1)")
        _check(
            self.train_fraction + self.validation_fraction < 1,
            "train_fraction + validation_fraction must leave some test users",
        )
        _check(self.query_size >= 1, "query_size must be >= 1")
        _check(self.min_support >= 1, "min_support must be >= 1")
        _check(self.max_support >= self.min_support, "max_support must be >= min_support")
        _check(
            self.min_ratings >= self.query_size + self.min_support,
            "min_ratings must be >= query_size + min_support",
        )
        _check(self.max_ratings >= self.min_ratings, "max_ratings must be >= min_ratings")
        _check(0 <= self.zip_prefix <= 5, "zip_prefix must be in 0..5")
        _check(self.item_id_min_ratings >= 1, "item_id_min_ratings must be >= 1")
        _check(self.folds == 0 or self.folds >= 2, "folds must be 0 (no folds) or >= 2")
        _check(self.folds == 0 or 0 <= self.fold < self.folds, "fold must be in 0..folds-1")
        _check(
            self.folds == 0 or self.user_split == "random",
            "folds need user_split='random' (folds shuffle the users)",
        )


@dataclass(frozen=True)
class ModelConfig(_Config):
    """The preference estimator's sizes (MeLU's by default) and which parameters adapt."""

    embedding_dim: int = 32
    hidden: tuple[int, ...] = (64, 64)
    fast_params: FastGroup = "mlp"  # mlp: the whole MLP (MeLU); head: last layer; all

    def __post_init__(self) -> None:
        _check(self.embedding_dim >= 1, "embedding_dim must be >= 1")
        _check(all(h >= 1 for h in self.hidden), "hidden sizes must be >= 1")


@dataclass(frozen=True)
class MetaConfig(_Config):
    """The inner loop. See ``melu.model.maml`` for why the defaults differ from MeLU's."""

    inner_steps: int = 5
    inner_lr: float = 0.05
    first_order: bool = False
    learn_inner_lr: bool = False  # Meta-SGD: one learned rate per fast parameter element

    def __post_init__(self) -> None:
        _check(self.inner_steps >= 0, "inner_steps must be >= 0")
        _check(self.inner_lr > 0, "inner_lr must be > 0")


@dataclass(frozen=True)
class TrainConfig(_Config):
    """The outer loop."""

    epochs: int = 30
    meta_batch: int = 32
    outer_lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    amp: Literal["none", "bf16"] = "none"
    max_tasks_per_epoch: int | None = None

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs must be >= 1")
        _check(self.meta_batch >= 1, "meta_batch must be >= 1")
        _check(self.outer_lr > 0, "outer_lr must be > 0")
        _check(self.grad_clip > 0, "grad_clip must be > 0")
        _check(self.patience >= 1, "patience must be >= 1")


@dataclass(frozen=True)
class Config(_Config):
    """All configs together, as saved in a bundle's ``config.json``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data.to_dict(),
            "model": self.model.to_dict(),
            "meta": self.meta.to_dict(),
            "train": self.train.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:  # type: ignore[override]
        if not isinstance(data, dict):
            raise ConfigError("config: expected an object")
        unknown = sorted(set(data) - {"data", "model", "meta", "train"})
        if unknown:
            raise ConfigError(f"config: unknown section(s) {unknown}")
        return cls(
            data=DataConfig.from_dict(data.get("data", {})),
            model=ModelConfig.from_dict(data.get("model", {})),
            meta=MetaConfig.from_dict(data.get("meta", {})),
            train=TrainConfig.from_dict(data.get("train", {})),
        )
