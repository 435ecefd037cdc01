"""The ranking head at its cheapest, for tests about something else.

EASE^R as the start (its λ and the liked part's still picked on validation users), no pick
of the part weights and no likelihood epochs: a few seconds instead of half a minute per
trained model. The head's own tests (test_ranking.py) and the shared evaluation and service
fixtures pick it as the default does.
"""

from __future__ import annotations

from typing import Any

CHEAP_HEAD: dict[str, Any] = {"rank_epochs": 0, "rank_mix": False}  # TrainConfig fields
CHEAP_HEAD_FLAGS = ("--rank-epochs", "0", "--no-rank-mix")  # the same as `melu train` flags
