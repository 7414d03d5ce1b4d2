"""Watching what is served: online metrics (``online``), drift between a reference window and a current one
(``drift``) and the HTML pages of these reports (``report``).

Each module is pure (tables in, typed results out) and imports nothing heavy; file paths, MLflow and the
schedules belong to ``recops.steps`` and ``flows/``. Import the submodule you need: this package runs nothing at
import time.
"""
