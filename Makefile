# Two entry points: `make demo` runs the default continual-tuning job, `make test` the tests.
# Each first creates or updates the project's virtual environment in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv
venv: $(VENV)/.installed

# CPU torch 2.13.0 goes in first: the pyproject range then installs nothing more, whereas a
# bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/mcit run

test: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q
