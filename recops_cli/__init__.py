"""The ``recops`` command line: wiring over the library (``recops``), its Prefect flows (``flows``) and its DVC
stages (``dvc.yaml``), like ``flows/`` and ``pipelines/``; the library imports none of them."""
