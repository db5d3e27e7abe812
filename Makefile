# The two quick-start commands:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'

# Two demo backends (blue, green) and a router at 127.0.0.1:8080, admin at 127.0.0.1:9090.
demo: install
	$(BIN)/router demo

# Installs what it can (Debian packages as root), then the whole suite.
test: install
	scripts/system-deps.sh
	scripts/run-tests.sh $(BIN)/python

# Load comparison against nginx and HAProxy (see benchmarks/README.md).
bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
