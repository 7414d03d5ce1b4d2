"""The ranking stage (LightGBM LambdaRank) and per-user top-k list building."""

from recops.ranking.lambdarank import predict_scores, refit_ranker, train_ranker
from recops.ranking.lists import top_k_lists

__all__ = ["predict_scores", "refit_ranker", "top_k_lists", "train_ranker"]
