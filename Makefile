# make demo: the main job on the embedded default (stdlib pairs); make test: the whole suite.
VENV ?= .venv
PYTHON ?= python3
# CPU machines take the local CPU wheel; on a CUDA machine plain torch (or set TORCH_SPEC).
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint

$(STAMP): pyproject.toml contrib/dualenc-wandb/pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e ".[hf,dev]" -e contrib/dualenc-wandb
	touch $@

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
