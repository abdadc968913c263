# Developer shortcuts. The README's two commands (scripts/run.sh, scripts/test.sh) need no make.
.DEFAULT_GOAL := help
VENV := .venv/bin

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: ## Create .venv with inferq and the dev tools
	scripts/bootstrap.sh --dev

up: ## Run the whole local stack in the foreground
	scripts/run.sh

lint: ## ruff lint and format check, mypy
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

format: ## Format and autofix with ruff
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

test: ## Lint, then the whole test suite
	scripts/test.sh

unit: ## Unit tests only (no services)
	$(VENV)/pytest tests/unit

coverage: ## Test suite with a coverage report of the API process
	$(VENV)/pytest --cov=inferq --cov=webapp --cov=tasks --cov=registry --cov=workers --cov-report=term-missing

model: ## Re-train and export the digits model into models/
	$(VENV)/python scripts/export_models.py

.PHONY: help install up lint format test unit coverage model
