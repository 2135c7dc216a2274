# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv on first use and install atoken with the CPU torch pin (constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/python -m pip
INSTALL := $(PIP) install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: install demo test bench lint

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(INSTALL) -e '.[samples,test]'

demo: install
	$(VENV)/bin/atoken demo

test: install
	$(VENV)/bin/python -m pytest

bench: install
	$(VENV)/bin/python -m pytest benchmarks/

lint: install
	$(VENV)/bin/ruff check atoken tests benchmarks examples
