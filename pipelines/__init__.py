"""DVC stage entry points: one tiny module per stage of dvc.yaml, each calling recops.steps."""
