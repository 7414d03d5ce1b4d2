"""DVC stage `register`: runs recops.steps.register with params.yaml (see dvc.yaml for its deps and outs)."""

from pipelines import run_stage_main

if __name__ == "__main__":
    run_stage_main("register")
