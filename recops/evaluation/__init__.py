"""Offline evaluation: ranking and beyond-accuracy metrics, A/B comparison of model versions."""
