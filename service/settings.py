"""Service settings from the environment (``MELU_`` prefix), separate from model configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from melu.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)


def from_env(cls: type[S], **values: Any) -> S:
    """``cls(**values)`` with the rest from ``MELU_*``; a bad value is a ``ConfigError``
    naming the variable (one line, not pydantic's multi-line report)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "MELU_" + str(first["loc"][0]).upper() if first["loc"] else "MELU_*"
        given = str(first.get("input"))[:60]
        raise ConfigError(f"{name}={given!r}: {first['msg']}") from exc


class Settings(BaseSettings):
    """Where the bundle is, where to listen, and the request limits.

    Every field reads ``MELU_<NAME>`` (e.g. ``MELU_MODEL=runs/quickstart/model``).
    """

    model_config = SettingsConfigDict(env_prefix="MELU_", extra="ignore")

    model: Path = Field(
        Path("runs/quickstart/model"),
        description="model bundle folder (or the run folder holding model/)",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    torch_threads: int = Field(1, ge=1, description="torch threads per worker")
    max_ratings: int = Field(200, ge=1, description="most ratings in one request")
    max_items: int = Field(5000, ge=1, description="most item_ids / candidate_ids in one request")
    max_k: int | None = Field(None, ge=1, description="largest k (default: the catalog size)")
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="larger bodies get 413")
    max_page: int = Field(200, ge=1, description="largest `limit` of GET /v1/items")
    max_batch: int = Field(256, ge=1, description="most users in one batch request")
    max_batch_items: int = Field(
        10_000,
        ge=1,
        description="most items answered by one batch request: the sum of k over its users",
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="milliseconds a group of POST /v1/recommendations waiting for the model "
        "stays open for more after its first arrived (0: only those already waiting)",
    )
    batch_requests: int = Field(
        32,
        ge=1,
        le=1024,
        description="most POST /v1/recommendations answered by one batched model call "
        "(1: one at a time)",
    )
    reload_interval: float = Field(
        10.0, ge=0, description="seconds between checks of MELU_MODEL for a new bundle (0: off)"
    )
    access_log: bool = Field(True, description="one JSON line per request on stderr")
    cors_origins: str = Field(
        "",
        description="comma-separated origins allowed to call the API from a browser "
        "(e.g. https://app.example.org, or * for any); empty: CORS off",
    )

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


class ConnectionLimits(BaseSettings):
    """Per-connection bounds enforced by ``service.protocol`` (``MELU_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="MELU_", extra="ignore")

    read_timeout: float = Field(
        10.0, gt=0, le=3600, description="seconds to receive a whole request (else 408)"
    )
    max_headers: int = Field(100, ge=1, le=10_000, description="most request headers (431)")
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1 << 24, description="most bytes of request line + headers (431)"
    )
