# Two entry points: `make demo` and `make test`. Both create .venv on first use. `make docs` builds the site.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
# A quiet install, nothing printed that the user need not act on: executorch is installed without its dependencies
# (below), so pip's resolver would report them missing after every later install ("ERROR: pip's dependency
# resolver ..."): --no-warn-conflicts; setuptools' "Editable installation" notice about folders shadowing the
# package (none here) is filtered by its message
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q --no-warn-conflicts

.PHONY: demo test install docs clean

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the local CPU wheel, never a CUDA build from the registry
	$(PIP) "torch==2.13.0"
	$(PIP) -e ".[dev]"
	# deployment runtimes the tests exercise (hwai.runtimes), torch held at 2.13.0 by the constraints file;
	# executorch without its dependencies (coremltools, hydra, tokenizers: export and run need none of them)
	$(PIP) -c constraints.txt -e ".[dev,openvino,litert,tflm]"
	$(PIP) -c constraints.txt --no-deps "executorch==1.5.1" "torchao>=0.18,<0.19"
	$(PIP) -c constraints.txt "ruamel.yaml>=0.18"
	$(PIP) --no-deps "snntorch==1.0.0"  # spiking nets: declares no dependencies
	# NIR export and its round trip in Norse and SpikingJelly (torch held by the constraints file)
	$(PIP) -c constraints.txt "nir>=1.0.8,<1.1" "nirtorch>=2.6,<2.7" "norse==1.1.0" "loguru>=0.7"
	$(PIP) -c constraints.txt --no-deps "spikingjelly==2.0.0"
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hwai optimize

# two pytest-xdist workers (the 2 cores CI has; the PostgreSQL tests keep to one, xdist_group). Measured 2026-12-06
# evening on 2 cores: the whole suite 1544 s in one process, 812 s in two (fresh-clone CI; the tests wait on
# subprocesses, files and sessions a good part of the time). `pytest` alone runs in one.
TEST_JOBS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadgroup

$(DOCS_STAMP): $(STAMP)
	$(PIP) -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

# the site, into build/site; --strict: a broken link, anchor or docstring reference fails the build
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache build/site
