# The two set-up commands of the README:
#   make dev-up   start the local cluster with MedCloud (the main job)
#   make test     run the whole test suite against real local servers
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: bootstrap dev-up dev-down dev-status manifests check-manifests lint test unit

bootstrap:
	./scripts/bootstrap.sh

dev-up: bootstrap
	$(BIN)/medcloud dev up

dev-down:
	$(BIN)/medcloud dev down

dev-status:
	$(BIN)/medcloud dev status

# CRDs are generated from the pydantic models; never edit crds/ by hand.
manifests: bootstrap
	$(BIN)/medcloud crds generate

# lint-imports: the layout's import rule (pyproject.toml [tool.importlinter], docs/architecture.md).
lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

unit: bootstrap
	$(BIN)/pytest tests/unit

test: lint
	$(BIN)/pytest -v tests
