# The two quick-start commands:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Also compiles the data plane's per-request modules in place with mypyc (setup.py), when a C
# compiler is present; `make clean` goes back to plain Python.
install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'

# Two demo backends (blue, green) and a router at 127.0.0.1:8080, admin at 127.0.0.1:9090.
demo: install
	$(BIN)/router demo

# Installs what it can (Debian packages as root), then the whole suite.
# With a C compiler the suite runs against the compiled modules, and checks that it does.
test: install
	scripts/system-deps.sh
	ROUTER_EXPECT_COMPILED=$$(command -v cc >/dev/null 2>&1 && echo 1) scripts/run-tests.sh $(BIN)/python

# Load comparison against nginx and HAProxy (see benchmarks/README.md).
bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
	rm -f router/*.so router/http/*.so *.so
