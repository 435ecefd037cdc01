"""melu: meta-learned cold-start movie recommendation (MeLU recipe, correct MAML).

The public API (README, "Python API")::

    import melu
    bundle = melu.train("ml-100k", out="runs/ml100k", epochs=10)
    model = melu.load(bundle)
    top = model.recommend({"gender": "F", "age": 25}, [(50, 5), (181, 4)], k=10)
    report = melu.evaluate(bundle)

``train``, ``load`` and ``evaluate`` live in ``melu.api`` and are imported on first use,
so ``import melu`` (and ``melu --version``) stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Recommender", "__version__", "configure", "evaluate", "load", "train"]

if TYPE_CHECKING:
    from melu.api import configure, evaluate, load, train
    from melu.serving.recommender import Recommender


def __getattr__(name: str) -> Any:
    """``melu.train`` etc., imported from ``melu.api`` when first asked for (PEP 562)."""
    if name in ("configure", "evaluate", "load", "train", "Recommender"):
        from melu import api

        return getattr(api, name)
    raise AttributeError(f"module 'melu' has no attribute {name!r}")
