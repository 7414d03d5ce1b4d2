"""recops: a two-stage recommender (matrix-factorisation candidates, LightGBM LambdaRank re-ranking) whose
every stage is a plain function here, orchestrated from outside by Prefect (``flows/``) and DVC (``dvc.yaml``).

Reading order for a newcomer: ``config`` (what can be set) -> ``steps`` (what each stage reads and writes) ->
the stage modules (``data``, ``validation``, ``split``, ``features``, ``candidates``, ``ranking``,
``evaluation``, ``export``, ``registry``). Nothing in this package imports Prefect or DVC, and importing it has
no side effects.
"""

from recops.errors import RecopsError

__all__ = ["RecopsError"]
__version__ = "0.1.0"
