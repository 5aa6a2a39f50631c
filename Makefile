# Two commands on a fresh machine: `make run` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/local

.PHONY: install run test test-fast bench compile clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# compat mode: a .pth file puts the checkout on sys.path, so new packages import at once.
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]' --config-settings editable_mode=compat
	# kubeflow-katib 0.19.0 pins protobuf<5, but kfp 2.17 and kserve 0.21 need protobuf 6.
	# Its modules import and work on protobuf 6, so it goes in without its pins; everything
	# it needs (kubernetes, grpcio, protobuf, six, urllib3, certifi) is already installed above.
	$(BIN)/pip install --quiet --no-deps kubeflow-katib==0.19.0
	touch $(STAMP)

# The whole pipeline, locally, on the built-in sprites data (quick profile).
run: install
	$(BIN)/kubevae pipeline run --local --profile quick --run-dir $(RUN_DIR)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/train_throughput.py

compile: install
	$(BIN)/kubevae pipeline compile --out kubevae_pipeline.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
