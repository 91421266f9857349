# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv if it is missing, installs segzoo into it, and runs.

PYTHON ?= $(shell for p in python3.11 python3.10 python3.9 python3.8 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not ((3, 8) <= sys.version_info[:2] <= (3, 11)))' 2>/dev/null && { echo $$p; break; }; done)
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.segzoo-installed
EXTRAS ?= cpu,test
PYTEST_ARGS ?=

.PHONY: demo test install clean-venv benchmark

$(VPY):
	@test -n "$(PYTHON)" || { echo "error: segzoo needs Python 3.8-3.11 (MXNet 1.9.1 needs numpy<1.24, which has no Python 3.12+ build). Install python3.11 or set PYTHON=/path/to/python3.11." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip

$(STAMP): setup.py $(VPY)
	$(VPY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(VPY) scripts/demo_train.py

benchmark: $(STAMP)
	$(VPY) benchmarks/data_pipeline.py

clean-venv:
	rm -rf $(VENV)
