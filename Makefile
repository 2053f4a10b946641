# cxrflow — the README's quickstart is `make run` then `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= demo
VARIANT ?= cpu
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export UV_LINK_MODE ?= copy
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: help venv run test lint lint-infra format typecheck unit compile bench stack stack-down clean image pictures

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-10s %s\n",$$1,$$2}'

$(BIN)/cxrflow: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

venv: $(BIN)/cxrflow ## create .venv from uv.lock (installs uv with pip if missing)

run: venv ## run the whole pipeline locally (kfp.local) on the demo profile, offline
	$(BIN)/cxrflow --profile $(PROFILE) pipeline run --local

test: venv lint typecheck lint-infra image ## ruff, mypy, unit + integration + pipeline tests (what CI runs)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

unit: venv ## the fast loop: tests not marked slow or s3 (a few minutes)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow and not s3"

lint: venv ## ruff lint + format check, deptry (imports = declared dependencies)
	$(BIN)/ruff check src components pipelines tests bench infra/stack infra/image docs/pictures
	$(BIN)/ruff format --check src components pipelines tests bench infra/stack infra/image docs/pictures
	$(BIN)/deptry src pipelines components infra/stack bench infra/image

format: venv ## apply ruff formatting and fixes
	$(BIN)/ruff check --fix src components pipelines tests bench infra/stack infra/image docs/pictures
	$(BIN)/ruff format src components pipelines tests bench infra/stack infra/image docs/pictures

pictures: venv ## regenerate the README's pictures from the finished run here (make run first; needs chromium)
	$(BIN)/python docs/pictures/make_pictures.py --run-dir . --out docs/pictures

lint-infra: venv ## kubectl kustomize, kubernetes-validate, checkov, hadolint, yamllint (pinned, isolated)
	infra/lint/lint-infra.sh

typecheck: venv ## mypy on src/ and the pictures script
	$(BIN)/mypy src docs/pictures

compile: venv ## compile the KFP pipeline YAML (paper and demo profiles) and the params schema
	$(BIN)/cxrflow --profile paper pipeline compile --output build/cxrflow-pipeline.yaml
	$(BIN)/cxrflow --profile demo pipeline compile --output build/cxrflow-pipeline-demo.yaml
	$(BIN)/cxrflow params schema --output build/params.schema.json

bench: venv ## run benchmarks (JSON results in bench/results/)
	$(BIN)/python bench/run.py

image: ## build the component image with podman (VARIANT=gpu for CUDA); record in build/image.json
	$(PYTHON) infra/image/build.py --variant $(VARIANT)

stack: venv ## start PostgreSQL + moto S3 + MLflow server (basic auth) on 127.0.0.1
	$(BIN)/python infra/stack/stack.py up

stack-down: ## stop what `make stack` started
	$(BIN)/python infra/stack/stack.py down

clean: ## remove run outputs (keeps .venv)
	rm -rf runs build mlruns.db mlartifacts .pytest_cache .mypy_cache .ruff_cache
