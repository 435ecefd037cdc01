"""Service settings from the environment (``MELU_`` prefix), separate from model configs."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
