"""Ranker features from a history (training period) and static attributes; see ``builder``."""

from recops.features.builder import (
    Attributes, HistoryStatistics, align_attributes, build_features, feature_names, gather_features,
    history_statistics,
)

__all__ = [
    "Attributes", "HistoryStatistics", "align_attributes", "build_features", "feature_names", "gather_features",
    "history_statistics",
]
