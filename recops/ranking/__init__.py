"""The ranking stage (LightGBM LambdaRank) and per-user top-k list building."""

from recops.ranking.lambdarank import predict_scores, refit_lambdarank, train_lambdarank
from recops.ranking.lists import ranked_lists, top_k_lists

__all__ = ["predict_scores", "ranked_lists", "refit_lambdarank", "top_k_lists", "train_lambdarank"]
