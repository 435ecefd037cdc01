"""Serving a model bundle: the public API the CLI and the HTTP service use.

``Recommender`` adapts to a person's ratings and ranks the catalog (``recommend``,
``predict``, ``onboarding_items``); its ``catalog`` searches and looks items up. Bad
request values raise ``InvalidInput`` with a pydantic-style ``loc`` tuple.
"""

from __future__ import annotations

from melu import __version__
from melu.errors import BundleError, InvalidInput, Loc
from melu.serving.catalog import Catalog
from melu.serving.recommender import Recommender
from melu.serving.types import (
    Adaptation,
    Item,
    ItemPage,
    OnboardingItem,
    Ratings,
    Reason,
    Recommendations,
    Request,
    Scored,
    User,
)

__all__ = [
    "Adaptation",
    "BundleError",
    "Catalog",
    "InvalidInput",
    "Item",
    "ItemPage",
    "Loc",
    "OnboardingItem",
    "Ratings",
    "Reason",
    "Recommendations",
    "Recommender",
    "Request",
    "Scored",
    "User",
    "__version__",
]
