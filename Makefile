# kit: the two commands of the README's quick start are `make demo` and `make test`.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
KIT     := $(VENV)/bin/kit
TORCH   ?= torch==2.13.0
DEEPSPEED ?= deepspeed==0.19.8
RESULTS ?= runs
CONFIG  ?= A800x1x8

.PHONY: demo test lint reproduce image clean-venv

# The CPU environment: torch first, DeepSpeed built against it (no build isolation), then the rest and kit.
$(VENV)/.installed: pyproject.toml env/requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r env/requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation "$(DEEPSPEED)"
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: $(VENV)/.installed  ## a tiny synthetic run on this CPU (two ranks, real DeepSpeed), ending in the result table
	$(KIT) run llava1_5_7b --config tiny --synthetic --native --results $(RESULTS)

test: $(VENV)/.installed  ## the whole test suite
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check kit cases tests bench

reproduce: $(VENV)/.installed  ## the reference configuration on this host, every stage, then the report
	$(KIT) run llava1_5_7b --config $(CONFIG) --native --data $(DATA) --models $(MODELS) --results $(RESULTS)

image:
	@echo "the container image comes with the container work (kit build)"; exit 2

clean-venv:
	rm -rf $(VENV)
