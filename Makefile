# Deep Health — `make run` serves the bundled model; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install-serve install-dev test-fast bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.serve-installed: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -q -e '.[web]'
	touch $@

$(VENV)/.dev-installed: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -q -e '.[dev]'
	touch $@ $(VENV)/.serve-installed

install-serve: $(VENV)/.serve-installed
install-dev: $(VENV)/.dev-installed
	@command -v chromium >/dev/null 2>&1 || { echo 'installing Debian chromium for the browser test'; apt-get update -q && apt-get install -y -q chromium; }
	@{ command -v Orthanc >/dev/null 2>&1 && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so && command -v dciodvfy >/dev/null 2>&1; } || { echo 'installing Debian orthanc, orthanc-dicomweb and dicom3tools for the PACS and DICOM tests'; apt-get update -q && apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb dicom3tools; }

run: install-serve
	$(VENV)/bin/deephealth serve --host $(HOST) --port $(PORT)

test: install-dev
	$(PY) -m pytest -q

test-fast: install-dev
	$(PY) -m pytest -q -m "not slow and not browser"

bench: install-dev
	$(PY) benchmarks/bench_inference.py

clean:
	rm -rf $(VENV) build dist .pytest_cache src/*.egg-info
