# Two commands on a fresh machine: `make run` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
RUN_DIR ?= runs/local

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' kubevae/__init__.py)
IMAGE ?= ghcr.io/kubevae/kubevae:$(VERSION)
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
CUDA_TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cu128

.PHONY: install install-dev browser lint typecheck run test test-quick test-properties docs bench compile manifests image image-cuda push clean

# install: what `make run` and the benchmarks need; install-dev adds the test and lint tools.
install: $(STAMP)

install-dev: $(DEV_STAMP)

# uv installs the same pins as pip would, in parallel: several times faster than pip in a fresh
# clone (the times: docs/measurements.md).
# uv does not read pip's settings, so pip's find-links (a folder of local wheels, such as a CPU
# build of torch) are passed on.
# --compile-bytecode writes the .pyc files at install, as pip does: where PYTHONDONTWRITEBYTECODE
# is set Python never caches what it compiles, and each step of a run compiled mlflow, torch and
# kfp again, seconds per step (docs/measurements.md).
UV_VERSION := 0.13.9
UV := $(BIN)/uv
FIND_LINKS = $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_INSTALL = $(UV) pip install --quiet --python $(BIN)/python --native-tls --compile-bytecode \
	$(foreach link,$(FIND_LINKS),--find-links $(link))

# Its own target, so that a .venv made before uv (by pip) gets it too.
$(UV):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)

$(STAMP): pyproject.toml constraints.txt | $(UV)
	# compat mode: a .pth file puts the checkout on sys.path, so new packages import at once.
	$(UV_INSTALL) -c constraints.txt -e . -C editable_mode=compat
	# kubeflow-katib 0.19.0 pins protobuf<5, but kfp 2.17 and kserve 0.21 need protobuf 6.
	# Its modules import and work on protobuf 6, so it goes in without its pins; everything
	# it needs (kubernetes, grpcio, protobuf, six, urllib3, certifi) is already installed above.
	$(UV_INSTALL) --no-deps kubeflow-katib==0.19.0
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(UV_INSTALL) -c constraints.txt -e '.[test,lint]' -C editable_mode=compat
	touch $(DEV_STAMP)

# The whole pipeline, locally, on the built-in sprites data (quick profile).
run: install
	$(BIN)/kubevae pipeline run --local --profile quick --run-dir $(RUN_DIR)

# The lint gate (.ci/run runs it before the tests): ruff with pyflakes, bugbear, import order,
# pyupgrade and bandit's security rules, then the type check, then the layer contracts
# (import-linter; [tool.importlinter] in pyproject.toml: dependencies point inward, no cluster SDK
# in kubevae/, no import cycles).
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# The type check alone: mypy on kubevae/, components/, pipelines/ and serving/ (settings in
# pyproject.toml), the second half of `make lint`.
typecheck: install-dev
	$(BIN)/mypy

# Tests run single-threaded (tests/conftest.py), so two pytest-xdist workers use both cores of a
# CI machine. `--dist loadfile` keeps each module on one worker, so its module fixtures are made
# once; the session's pipeline run is made once for all workers (conftest.py::pipeline_run).
TEST_WORKERS ?= 2
test: install-dev browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The quick tier: the suite without the tests marked `slow` (end-to-end runs, training, servers
# under load), for the edit-test loop; `make test` stays the full suite. No browser needed.
test-quick: install-dev
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# The split's property tests with the `long` hypothesis profile (tests/conftest.py): 500 examples
# per property instead of `make test`'s few, fresh random seeds every run (no --hypothesis-seed:
# a fixed seed would also switch off the example database), failures kept in .hypothesis/ and
# replayed first next time; the statistics give each property's example count. Hours on 2 cores;
# PROPERTY_ARGS="--hypothesis-verbosity=verbose -s" prints each example as it runs.
# (tests/test_serving_fuzz.py is a fuzz test with its own fixed counts; make test runs it.)
PROPERTY_ARGS ?=
test-properties: install-dev
	$(BIN)/python -m pytest -q -n 0 tests/test_split_properties.py --hypothesis-profile=long \
	  --hypothesis-show-statistics $(PROPERTY_ARGS)

# Headless Chromium and its driver for the browser tests (tests/test_browser.py), from Debian's
# packages. Only `make test` needs them; nothing happens when both are installed already. CI runs
# as root; elsewhere sudo is used. Where neither works the browser tests are skipped (in CI,
# where CI is set, they fail instead).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  echo "browser tests: $$(chromium --version 2>/dev/null), $$(chromedriver --version | cut -d' ' -f1-2)"; \
	else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	      --no-install-recommends chromium chromium-driver; } || \
	  { [ -z "$$CI" ] && echo "could not install chromium: the browser tests will be skipped"; }; \
	fi

bench: install
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/dedup.py
	$(BIN)/python benchmarks/serving.py

compile: install
	KUBEVAE_IMAGE=$(IMAGE) $(BIN)/kubevae pipeline compile --out kubevae_pipeline.yaml

# docs/parameters.md, generated from the pipeline's parameter table and profiles (a test fails when
# the committed page differs).
docs: install
	$(BIN)/python -m pipelines.param_docs > docs/parameters.md.new  # a failed import keeps the page
	mv docs/parameters.md.new docs/parameters.md

# The Katib Experiment, PyTorchJob and InferenceService templates, generated from the same
# builders the pipeline uses (a test fails when the committed YAML differs).
manifests: install
	$(BIN)/python -m components.backends.render manifests/workloads

# One image serves as the components' base image, the Katib trial and PyTorchJob image and the
# KServe predictor. Needs a Docker engine (none runs on the development machines here).
image:
	docker build --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) -t $(IMAGE) .

image-cuda:
	docker build --build-arg TORCH_INDEX_URL=$(CUDA_TORCH_INDEX_URL) -t $(IMAGE)-cuda .

push: image
	docker push $(IMAGE)

clean:
	rm -rf $(VENV) runs .pytest_cache
