# The two commands on a fresh machine: `make run` and `make test`. They share .venv: `make run`
# installs what serving and export need (the `export` extra), `make test` adds the `dev` extra
# (test tools, linters, the documentation builder). One stamp file per install.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
REPOSITORY ?= model_repository
MODEL ?= digits
CHECKPOINT ?= checkpoints/digits_cnn.pt
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint format docs model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[export]'
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[export,dev]'
	touch $(STAMP)

# Train and export the default model only when the repository has none.
model: $(RUN_STAMP)
	@if ls $(REPOSITORY)/$(MODEL)/*/model.onnx >/dev/null 2>&1; then \
		echo "model repository already holds $(MODEL): reusing it"; \
	else \
		$(BIN)/normserve train --arch digits_cnn --out $(CHECKPOINT) && \
		$(BIN)/normserve export $(CHECKPOINT) --repository $(REPOSITORY) --name $(MODEL); \
	fi

run: model
	exec $(BIN)/normserve serve --repository $(REPOSITORY) --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The documentation site (docs/, mkdocs.yml) into site/, failing on a broken link or a page
# missing from the nav, as the test suite does.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site

# ---- Containers (docs/deploy.md). The serving image with the default model baked in: the model
# is trained and exported first when $(REPOSITORY) has none. PYTHON_IMAGE names the Python 3.11
# slim base (a local stand-in where Docker Hub is out of reach: docs/contributing.md).
IMAGE ?= normserve:latest
PYTHON_IMAGE ?= python:3.11-slim
DOCKER ?= docker
DOCKER_BUILD_FLAGS ?= --network host

.PHONY: image test-fast

image: model
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) --target serve \
		--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) --build-arg MODEL_REPOSITORY=$(REPOSITORY) \
		-t $(IMAGE) .

# Every test but the ones that need a container engine (marker `docker`): the quick local loop.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -m "not docker"

# ---- Benchmarks (docs/benchmarks.md): every figure, chart and the docs page's tables, from scratch.
# QUICK=1: short runs that check the scripts, into $TMPDIR/normserve-bench-quick (never the
# published figures in benchmarks/results).
# BENCH_ARGS: extra options, e.g. BENCH_ARGS="--only overhead,decode".
# The peers benchmark (normserve beside Triton and KServe) installs each peer once into its own
# environment under $(PEERS_DIR) (about 1 GB together, never into .venv; stamp files);
# PEERS="kserve" picks the peers, PEERS="" runs normserve alone.
BENCH_STAMP := $(VENV)/.bench-installed
PEERS_DIR ?= .venv-peers
PEERS ?= triton,kserve

.PHONY: bench

$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[export,dev,bench]'
	touch $(BENCH_STAMP)

bench: model $(BENCH_STAMP)
	NORMSERVE_BENCH_REPOSITORY=$(REPOSITORY) NORMSERVE_BENCH_PEERS_DIR=$(abspath $(PEERS_DIR)) \
	NORMSERVE_BENCH_PEERS="$(PEERS)" $(BIN)/python -m benchmarks $(if $(QUICK),--quick) $(BENCH_ARGS)
