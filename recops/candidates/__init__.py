"""Candidate generation: several sources (implicit MF, EASE, item-kNN, popularity, a sequence transformer) merged
per user."""

from __future__ import annotations

from recops.candidates.merge import fit_sources, merged_candidates, source_columns
from recops.candidates.mf import MFCandidateGenerator
from recops.data.matrices import interaction_matrix
from recops.candidates.registry import SOURCES
from recops.candidates.sequence import SequenceSource
from recops.candidates.sources import (EASE, CandidateSource, DecayedPopularity, History, ItemKNN,
                                       MatrixFactorization, MostPopular, RecentItemKNN, RecentPopularity, recommend,
                                       top_n)

__all__ = [
    "EASE", "SOURCES", "CandidateSource", "DecayedPopularity", "History", "ItemKNN", "MFCandidateGenerator",
    "MatrixFactorization", "MostPopular", "RecentItemKNN", "RecentPopularity", "SequenceSource", "fit_sources",
    "interaction_matrix", "merged_candidates",
    "recommend", "source_columns", "top_n",
]
