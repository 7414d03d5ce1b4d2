"""Dense int32 indices for users and items, made once, and the way back to the original ids.

Index ``k`` of ``IdIndex.user_ids`` is the original id of user ``k``. Items are numbered in id order. Users are
numbered in the order of their first interaction (time, then row order), never by the value of their id: a run
on pseudonymised ids (``privacy.pseudonymize``) numbers every user as the run on raw ids does, so the models'
seeded initialisations, the ranker's query order and every metric are the same. Everything between the split
and the reports works on the dense indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recops.columns import Columns


@dataclass(frozen=True)
class IdIndex:
    user_ids: np.ndarray
    item_ids: np.ndarray
    _user_order: np.ndarray = field(init=False, repr=False, compare=False)
    _item_order: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_user_order", np.argsort(self.user_ids, kind="stable"))
        object.__setattr__(self, "_item_order", np.argsort(self.item_ids, kind="stable"))

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame) -> IdIndex:
        users = interactions[Columns.USER_ID].to_numpy()
        by_time = np.argsort(interactions[Columns.TIMESTAMP].to_numpy(), kind="stable")
        users = pd.unique(users[by_time])  # in order of first interaction; ties in row order
        items = np.sort(pd.unique(interactions[Columns.ITEM_ID].to_numpy()))
        return cls(user_ids=users, item_ids=items)

    def encode(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with dense ``user_idx`` / ``item_idx`` in place of the original id columns."""
        out = frame.drop(columns=[Columns.USER_ID, Columns.ITEM_ID])
        out.insert(0, Columns.USER, self.user_index(frame[Columns.USER_ID].to_numpy()))
        out.insert(1, Columns.ITEM, self.item_index(frame[Columns.ITEM_ID].to_numpy()))
        return out

    def user_index(self, ids: np.ndarray) -> np.ndarray:
        return _lookup(self.user_ids, self._user_order, ids, "user")

    def item_index(self, ids: np.ndarray) -> np.ndarray:
        return _lookup(self.item_ids, self._item_order, ids, "item")

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


def _lookup(known: np.ndarray, order: np.ndarray, ids: np.ndarray, kind: str) -> np.ndarray:
    """The positions of ``ids`` in ``known`` (``order`` sorts ``known``); KeyError naming how many are unknown."""
    ids = np.asarray(ids)
    pos = np.minimum(np.searchsorted(known, ids, sorter=order), len(known) - 1)
    found = order[pos] if len(known) else pos
    unknown = known[found] != ids if len(known) else np.ones(len(ids), dtype=bool)
    if unknown.any():
        raise KeyError(f"{int(unknown.sum())} unknown {kind} ids, e.g. {ids[unknown][:5].tolist()}")
    return found.astype(np.int32)
