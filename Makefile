# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the local CPU wheel, never a CUDA build from the registry
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# deployment runtimes the tests exercise (hwai.runtimes), torch held at 2.13.0 by the constraints file;
	# executorch without its dependencies (coremltools, hydra, tokenizers: export and run need none of them)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,openvino,litert,tflm]"
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps "executorch==1.5.1" "torchao>=0.18,<0.19"
	$(BIN)/python -m pip install -q -c constraints.txt "ruamel.yaml>=0.18"
	$(BIN)/python -m pip install -q --no-deps "snntorch==1.0.0"  # spiking nets: declares no dependencies
	# NIR export and its round trip in Norse and SpikingJelly (torch held by the constraints file)
	$(BIN)/python -m pip install -q -c constraints.txt "nir>=1.0.8,<1.1" "nirtorch>=2.6,<2.7" "norse==1.1.0" "loguru>=0.7"
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps "spikingjelly==2.0.0"
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hwai optimize

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
