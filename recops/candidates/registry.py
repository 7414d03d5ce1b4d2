"""Every candidate source by its name in ``candidates.sources`` (and in a bundle's ``sources/``): :data:`SOURCES`.

A module of its own so that sources defined in other modules (``recops.candidates.sequence``) register beside
those of ``recops.candidates.sources`` without an import cycle.
"""

from __future__ import annotations

from recops.candidates.sequence import SequenceSource
from recops.candidates.sources import (EASE, CandidateSource, DecayedPopularity, ItemKNN, MatrixFactorization,
                                       MostPopular, RecentItemKNN, RecentPopularity)

SOURCES: dict[str, type[CandidateSource]] = {cls.name: cls for cls in (
    MostPopular, RecentPopularity, DecayedPopularity, ItemKNN, RecentItemKNN, EASE, MatrixFactorization,
    SequenceSource)}
