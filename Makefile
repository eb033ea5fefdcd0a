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
# bytecode, which every Ray worker would otherwise pay for at import (seconds per worker).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check "$(TORCH)" uv
	$(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode -e '.[dev]'
	touch $@

# Starts afresh each time: it removes what an earlier demo and the README's "Use" commands wrote
# there (only those folders), so the search is always demo/experiments/demo, the name "Use" pastes.
demo: setup
	rm -rf $(DEMO)/data $(DEMO)/experiments/demo $(DEMO)/runs $(DEMO)/predictions.tsv $(DEMO)/ensemble-predictions.tsv
	$(AAM) convert --example mouse_age_mini --out $(DEMO)/data
	$(AAM) tune search_spaces/demo.yaml --data $(DEMO)/data --storage-path $(DEMO)/experiments --name demo

# The suite starts its own local Ray (own temp dir, own ports) and stops only that one: a Ray
# you run in another terminal keeps running.
test: setup
	$(PY) -m pytest -q -ra --durations=15

clean-demo:
	rm -rf $(DEMO)
