"""melu: meta-learned cold-start movie recommendation (MeLU recipe, correct MAML)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
