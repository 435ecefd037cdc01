"""FeatureTables: every user's and item's encoded features, addressed by row.

The encoded side of ``melu.features``: ``FeatureSpace`` turns raw columns into index
tensors once (at prepare or bundle load); these tables hold them, and ``gather`` /
``with_user`` assemble the ``FeatureBatch`` of (user, item) pairs that the model encodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor

if TYPE_CHECKING:
    from melu.features import FeatureSpace

FeatureBatch = dict[str, Tensor]  # field name -> (..., N) or (..., N, L) int64 indices


@dataclass
class FeatureTables:
    """Encoded features of every user and item, addressed by row.

    ``users[field]``: (U,) ; ``items[field]``: (I,) or (I, L). ``user_ids`` (U,) and
    ``item_ids`` (I,) are the data set's own ids of each row.
    """

    user_ids: Tensor
    users: FeatureBatch
    item_ids: Tensor
    items: FeatureBatch

    @classmethod
    def build(cls, space: FeatureSpace, users: pd.DataFrame, items: pd.DataFrame) -> FeatureTables:
        return cls(
            torch.tensor(users["user_id"].to_numpy(dtype=np.int64)),
            space.encode_users(users),
            torch.tensor(items["item_id"].to_numpy(dtype=np.int64)),
            space.encode_items(items),
        )

    def gather(self, user_rows: Tensor, item_rows: Tensor) -> FeatureBatch:
        """Features of (user, item) pairs: ``user_rows`` (...,) and ``item_rows`` (..., N).

        Returns field → (..., N) or (..., N, L).
        """
        out: FeatureBatch = {}
        for name, table in self.users.items():
            out[name] = table[user_rows].unsqueeze(-1).expand(item_rows.shape)
        for name, table in self.items.items():
            out[name] = table[item_rows]
        return out

    def with_user(self, user: Mapping[str, Tensor], item_rows: Tensor) -> FeatureBatch:
        """Features of one user (field → () index) paired with ``item_rows`` (N,)."""
        out: FeatureBatch = {k: v.expand(item_rows.shape) for k, v in user.items()}
        for name, table in self.items.items():
            out[name] = table[item_rows]
        return out

    def to(self, device: torch.device | str) -> FeatureTables:
        return FeatureTables(
            self.user_ids.to(device),
            {k: v.to(device) for k, v in self.users.items()},
            self.item_ids.to(device),
            {k: v.to(device) for k, v in self.items.items()},
        )
