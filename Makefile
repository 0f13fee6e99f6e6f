# Two entry points: `make demo` runs the default continual-tuning job, `make test` the tests.
# Each first creates or updates the project's virtual environment in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv test-lowest browser bench
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

# The report test opens report.html in headless Chromium: Debian's package, installed here when it is
# missing and we are root (else that one test is skipped and says why).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
		echo "chromium not installed: the report's browser test will be skipped"

# One pytest-xdist worker per core (at most 4), a test file per worker at a time (module fixtures
# built once); each worker uses one thread (tests/conftest.py).
test: venv browser
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

# The lowest versions pyproject allows (uv's lowest-direct resolution, torch pinned to the CPU
# wheel) in their own environment, then the tests: the lower bounds are the ones tested.
LOWEST := .venv-lowest
test-lowest:
	test -x $(LOWEST)/bin/python || $(PY) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet uv "torch==2.13.0"
	echo "torch==2.13.0" > $(LOWEST)/torch-pin.txt
	$(LOWEST)/bin/python -m uv pip install --quiet --python $(LOWEST)/bin/python --constraint $(LOWEST)/torch-pin.txt \
		--resolution lowest-direct -e ".[test]"
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(LOWEST)/bin/python -m pytest -q

# Every bench script (bench/*.py, one at a time), all figures in bench/results.json and the
# headline ones beside their goals on stdout. Run it on an otherwise idle machine.
bench: venv
	HF_HUB_OFFLINE=1 $(BIN)/python bench/run_all.py --out bench/results.json
