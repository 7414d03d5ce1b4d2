# recops: `make run` sets everything up and runs the pipeline on the embedded data; `make test` runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# Stages call `python` and `dvc`: make them the project's, whatever the caller's PATH holds.
export PATH := $(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: server deploy tune quality help install install-sequence run test test-unit repro status ui plots pages clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python recops/install_progress.py -r requirements.lock
	$(BIN)/python recops/install_progress.py --no-deps -e .
	touch $(STAMP)

# Offline copies of the scripts and styles the HTML pages use (vega for `dvc plots show`, jQuery/Bootstrap/... for
# the Data Docs): pinned npm packages, fetched with `npm pack` and checked against recops/web_assets/assets.json.
WEB_ASSETS := recops/web_assets/vendor/.complete
$(WEB_ASSETS): $(STAMP) recops/web_assets/assets.json recops/web_assets/__init__.py
	$(BIN)/python -m recops.web_assets

install: $(STAMP) $(WEB_ASSETS) ## Create .venv and install the pinned dependencies (requirements.lock)

# The optional sequence source's training stack (PyTorch, CPU build): `make run` does not need it unless
# params.yaml lists `sequence` among candidates.sources; the tests of the source do.
SEQ_STAMP := $(VENV)/.installed-sequence
$(SEQ_STAMP): $(STAMP) requirements-sequence.lock
	$(BIN)/python recops/install_progress.py -r requirements-sequence.lock
	touch $(SEQ_STAMP)

install-sequence: $(SEQ_STAMP) ## Add the optional sequence source's PyTorch (CPU) to .venv (pip install -e '.[sequence]')

run: install ## Run the whole pipeline on the embedded MovieLens-100k and print the metrics
	$(BIN)/recops run

# One pytest worker per core (module by module: a module's tests share their fixtures); the stages run
# single-threaded (threads: 1), so two workers on two cores take about half the wall time of one. Modules go
# out in collection order, the longest first (tests/conftest.py, LONGEST_FIRST), so both workers end together.
TEST_WORKERS ?= auto

test: install install-sequence ## Run all tests (unit, data, integration on real MovieLens-100k)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-unit: install install-sequence ## Run the fast unit tests only
	$(BIN)/python -m pytest tests/unit

tune: install ## Tune sources and ranker on the valid fold (Optuna, budget from params) and write params.yaml
	$(BIN)/recops tune --write

quality: install ## The quality benchmark: two-stage vs single-stage peers on ML-100k, per-user split and rolling timeline (3 seeds) -> reports/quality.json
	$(BIN)/python -m benchmarks.quality --seeds 3 --protocol headline

# Backends of `make server`: SQLite in the project by default; for PostgreSQL, e.g.
#   make server MLFLOW_BACKEND=postgresql+psycopg://postgres@127.0.0.1:5432/mlflow \
#               PREFECT_DATABASE=postgresql+asyncpg://postgres@127.0.0.1:5432/prefect
MLFLOW_BACKEND   ?= sqlite:///$(CURDIR)/mlflow.db
PREFECT_DATABASE ?= sqlite+aiosqlite:///$(CURDIR)/.prefect/prefect.db

server: install ## Start local Prefect (127.0.0.1:4200) and MLflow (127.0.0.1:5000) servers; Ctrl-C stops both
	@echo "Prefect UI http://127.0.0.1:4200  MLflow UI http://127.0.0.1:5000  (then: make deploy)"
	@mkdir -p $(CURDIR)/.prefect
	@trap 'kill 0' INT TERM EXIT; \
	PREFECT_HOME=$(CURDIR)/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false \
		PREFECT_API_DATABASE_CONNECTION_URL='$(PREFECT_DATABASE)' \
		$(BIN)/prefect server start --host 127.0.0.1 --port 4200 & \
	$(BIN)/mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri '$(MLFLOW_BACKEND)' \
		--default-artifact-root $(CURDIR)/mlartifacts & \
	wait

deploy: install ## Register the scheduled deployments with `make server`'s Prefect and run them here (Ctrl-C stops)
	PREFECT_API_URL=http://127.0.0.1:4200/api $(BIN)/recops deploy

repro: install ## Reproduce the pipeline with DVC (only stages whose inputs changed)
	$(BIN)/dvc repro

status: install ## What DVC would rerun, and the current metrics
	$(BIN)/dvc status
	$(BIN)/dvc metrics show

plots: install ## The DVC plots page (vega inlined: works offline) -> dvc_plots/index.html
	$(BIN)/dvc plots show

pages: ## The address of every HTML page recops wrote (open them in a browser; none needs the network)
	@for page in reports/ab.html reports/backtest.html reports/validation/data_docs/index.html dvc_plots/index.html; do \
		if [ -f "$$page" ]; then echo "file://$(CURDIR)/$$page"; else echo "(not written yet) $$page"; fi; \
	done
	@echo "recops serve: http://127.0.0.1:8000/docs and /redoc"

ui: install ## Open the MLflow UI on the project's tracking database
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts

clean: ## Remove produced data, models, reports and tracking state (keeps .venv and the DVC remote)
	rm -rf data/raw data/prepared data/split data/candidates data/features models reports mlflow.db mlartifacts .prefect
