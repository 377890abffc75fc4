# avssl: every target sets itself up (a .venv on first use) and says what it did.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.avssl-installed

# Dataset preparation
DATASET ?=
ROOT ?=
SPLITS ?=
OUT ?=
WORKERS ?= $(shell nproc)
MAX_FAILURES ?= 0.05
PREP_ARGS ?=
# Pretraining / export / evaluation
RECIPE ?= mavil
DATA ?=
ARGS ?=
SEEDS ?=
PARENT_ARGS ?=
RESUME ?=
CHECK ?=
CKPT ?=
ONNX ?=
EVAL ?=
ENCODER ?=
TESTS ?= tests

.PHONY: setup test lint typecheck prep demo pretrain export eval bench clean

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)
	@echo "[setup] installed avssl and its dependencies into $(VENV)"

setup: $(STAMP)
	@$(PY) -c "import avssl, torch; print('[setup] avssl', avssl.__version__, 'torch', torch.__version__, 'in $(VENV)')"

test: $(STAMP)
	$(PY) -m pytest -q $(TESTS)
	@echo "[test] done"

lint: $(STAMP)
	$(PY) -m ruff check src tests data_prep bench hubconf.py
	$(PY) -m ruff format --check src tests data_prep bench hubconf.py
	@echo "[lint] ruff: clean"

typecheck: $(STAMP)
	$(PY) -m mypy src/avssl
	@echo "[typecheck] mypy: clean"

prep: $(STAMP)
	$(PY) -m data_prep --dataset "$(DATASET)" --root "$(ROOT)" --splits "$(SPLITS)" --out "$(OUT)" \
	  --workers $(WORKERS) --max-failures $(MAX_FAILURES) $(PREP_ARGS)

pretrain: $(STAMP)
	$(PY) -m avssl.cli pretrain --recipe "$(RECIPE)" --data "$(DATA)" --resume "$(RESUME)" \
	  $(if $(filter 1 yes true,$(CHECK)),--check,) -- $(ARGS)

export: $(STAMP)
	$(PY) -m avssl.cli export --ckpt "$(CKPT)" --out "$(OUT)" $(if $(filter 1 yes true,$(ONNX)),--onnx,)

eval: $(STAMP)
	$(PY) -m avssl.cli eval --protocol "$(EVAL)" --encoder "$(ENCODER)" --data "$(DATA)" \
	  $(if $(OUT),--out "$(OUT)",) $(ARGS)

demo: $(STAMP)
	$(PY) -m avssl.demo --recipe "$(RECIPE)" $(if $(strip $(DATA)),--data "$(DATA)",) \
	  $(if $(strip $(SEEDS)),--seeds "$(SEEDS)",) \
	  $(if $(strip $(PARENT_ARGS)),--parent-args="$(PARENT_ARGS)",) \
	  $(if $(strip $(ARGS)),-- $(ARGS),)

bench: $(STAMP)
	$(PY) bench/loader.py
	$(PY) bench/eval.py
	$(PY) bench/step.py

clean:
	rm -rf runs shards encoders eval_out .pytest_cache
