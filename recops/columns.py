"""Column names of the tables passed between stages, written once.

Prepared tables (after ingest) carry the user's original ids in ``USER_ID`` / ``ITEM_ID``; tables after the
split carry dense int32 indices in ``USER`` / ``ITEM`` and the original ids come back only at the edges.
"""


class Columns:
    USER_ID = "user_id"
    ITEM_ID = "item_id"
    TIMESTAMP = "timestamp"
    RATING = "rating"
    WEIGHT = "weight"
    SPLIT = "split"

    USER = "user_idx"
    ITEM = "item_idx"

    LABEL = "label"
    SCORE = "score"
    RANK = "rank"
    SOURCE_RANK = "mf_rank"


SPLIT_VALUES = ("train", "valid", "test")

# Timestamps are Unix seconds (``Columns.TIMESTAMP``); every window, age and half-life in params is in days.
DAY = 86_400.0
