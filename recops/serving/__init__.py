"""Serving a registered model version: offline batch scoring of every known user (``recops.serving.batch``)."""

from recops.serving.batch import batch_score

__all__ = ["batch_score"]
