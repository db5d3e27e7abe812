# The two quick-start commands:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The package, and for the tests its extras: test (which includes etcd). Either compiles the
# data plane's per-request modules in place with mypyc (setup.py), when a C compiler is
# present; `make clean` goes back to plain Python. That takes about 40 s, so it runs again only
# when the packaging or a module of the router changed since (the stamp files; the full install
# stands for the package's too).
SOURCES := pyproject.toml setup.py $(wildcard router/*.py router/*/*.py router/*/*/*.py router/*/*.c)
PACKAGE := $(VENV)/.installed-package
STAMP   := $(VENV)/.installed
$(PACKAGE): $(SOURCES) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@
$(STAMP): $(SOURCES) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(PACKAGE)

install: $(STAMP)

# Demo backends (blue, green, and green-v2 for the README's release walkthrough) and a router
# at 127.0.0.1:8080, admin at 127.0.0.1:9090; the package only, not the test tools. Other
# addresses: make demo DEMO_FLAGS='--listen 127.0.0.1:8081 --admin 127.0.0.1:9091 --blue
# 127.0.0.1:0 --green 127.0.0.1:0 --green-v2 127.0.0.1:0' (router demo --help lists them; port
# 0: any free one). The demo prints the routerctl command for its own admin address.
DEMO_FLAGS ?=
demo: $(PACKAGE)
	$(BIN)/router demo $(DEMO_FLAGS)

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
	rm -f router/*.so router/*/*.so *.so
