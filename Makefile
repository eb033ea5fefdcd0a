# The two commands of README.md:
#   make demo   a real search (search_spaces/demo.yaml) on the bundled example data, on an embedded local Ray
#   make test   the test suite (what .ci/run calls)
# Both create the virtual environment in .venv on first use.

VENV   ?= .venv
PY     := $(VENV)/bin/python
AAM    := $(VENV)/bin/aam
# CPU build by default; on a GPU machine: make setup TORCH='torch==2.13.0 --index-url ...' or install torch first.
TORCH  ?= torch==2.13.0
DEMO   ?= demo

.PHONY: setup demo test clean-demo

setup: $(VENV)/.installed

# pip takes torch (it knows this machine's wheel folder); uv installs the rest and compiles
# bytecode, which every Ray worker would otherwise pay for at import (RAY_NOTES §1).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check "$(TORCH)" uv
	$(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode -e '.[dev]'
	touch $@

demo: setup
	$(AAM) convert --example mouse_age_mini --out $(DEMO)/data --force
	$(AAM) tune search_spaces/demo.yaml --data $(DEMO)/data --storage-path $(DEMO)/experiments --name demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(VENV)/bin/ray stop --force >/dev/null 2>&1 || true
	$(PY) -m pytest -q -ra
	$(VENV)/bin/ray stop --force >/dev/null 2>&1 || true

clean-demo:
	rm -rf $(DEMO)
