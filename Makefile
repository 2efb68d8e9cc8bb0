# The README's test command is `make test`; .ci/run runs exactly it.
PYTHON ?= python3

.PHONY: install test test-fast lint crd cluster-binaries

install:
	$(PYTHON) -m pip install -e ".[dev]"

cluster-binaries:
	bash tests/cluster/build.sh

test: cluster-binaries
	$(PYTHON) -m pytest

test-fast:
	$(PYTHON) -m pytest -m "not slow and not controlplane"

lint:
	ruff check . && ruff format --check .

crd:
	maap crd > crds/finetunejobs.maap.dev.yaml
