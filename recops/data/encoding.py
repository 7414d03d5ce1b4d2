"""Dense int32 indices for users and items, made once, and the way back to the original ids.

Index ``k`` of ``IdIndex.user_ids`` is the original id of user ``k``; ids are sorted so the mapping does not
depend on row order. Everything between the split and the reports works on the dense indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recops.columns import Columns


@dataclass(frozen=True)
class IdIndex:
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame) -> IdIndex:
        users = np.sort(pd.unique(interactions[Columns.USER_ID].to_numpy()))
        items = np.sort(pd.unique(interactions[Columns.ITEM_ID].to_numpy()))
        return cls(user_ids=users, item_ids=items)

    def encode(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with dense ``user_idx`` / ``item_idx`` in place of the original id columns."""
        out = frame.drop(columns=[Columns.USER_ID, Columns.ITEM_ID])
        out.insert(0, Columns.USER, self.user_index(frame[Columns.USER_ID].to_numpy()))
        out.insert(1, Columns.ITEM, self.item_index(frame[Columns.ITEM_ID].to_numpy()))
        return out

    def user_index(self, ids: np.ndarray) -> np.ndarray:
        return _lookup(self.user_ids, ids, "user")

    def item_index(self, ids: np.ndarray) -> np.ndarray:
        return _lookup(self.item_ids, ids, "item")

    def to_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        users = pd.DataFrame({Columns.USER: np.arange(self.n_users, dtype=np.int32), Columns.USER_ID: self.user_ids})
        items = pd.DataFrame({Columns.ITEM: np.arange(self.n_items, dtype=np.int32), Columns.ITEM_ID: self.item_ids})
        return users, items

    @classmethod
    def from_frames(cls, users: pd.DataFrame, items: pd.DataFrame) -> IdIndex:
        return cls(
            user_ids=users.sort_values(Columns.USER)[Columns.USER_ID].to_numpy(),
            item_ids=items.sort_values(Columns.ITEM)[Columns.ITEM_ID].to_numpy(),
        )


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray, kind: str) -> np.ndarray:
    pos = np.searchsorted(sorted_ids, ids)
    pos_clipped = np.minimum(pos, len(sorted_ids) - 1)
    unknown = sorted_ids[pos_clipped] != ids
    if unknown.any():
        raise KeyError(f"{int(unknown.sum())} unknown {kind} ids, e.g. {ids[unknown][:5].tolist()}")
    return pos.astype(np.int32)
