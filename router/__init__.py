"""Weighted HTTP/1.1 reverse-proxy router for blue-green releases."""

from __future__ import annotations

import importlib.metadata
import os

# The per-request modules setup.py compiles with mypyc when it can (router/<name>.*.so beside
# router/<name>.py; the interpreter imports the compiled one first). setup.py reads this list
# from this file: a literal tuple of strings, on its own.
COMPILED_MODULES = ("http/framing", "http/fields", "http/request_head", "http/response_head",
                    "dataplane/phases", "dataplane/balancer", "dataplane/counters",
                    "dataplane/sticky", "dataplane/table", "dataplane/routing",
                    "dataplane/upstream", "dataplane/pool", "dataplane/deadlines",
                    "dataplane/accesslog", "logs", "dataplane/context", "dataplane/exchange",
                    "dataplane/reader", "dataplane/client", "dataplane/parking")


# Hand-written C extensions, router/<name>.*.so built from router/<name>.c (setup.py).
C_MODULES = ("http/_head", "http/_fields", "process/_pools")


def _refuse_stale_builds() -> None:
    """In a source checkout, a compiled module older than its source would run old code in
    silence: refuse to start instead, and say how to fix it."""
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.exists(os.path.join(here, os.pardir, "setup.py")):
        return  # an installed package: built from the sources beside it
    for name, ext in [(n, ".py") for n in COMPILED_MODULES] + [(n, ".c") for n in C_MODULES]:
        folder, _, base = os.path.join(here, name).rpartition(os.sep)
        src = os.path.join(folder, base + ext)
        if not os.path.exists(src):
            continue
        for so in os.listdir(folder):
            if so.startswith(base + ".") and so.endswith(".so"):
                if os.path.getmtime(src) > os.path.getmtime(os.path.join(folder, so)):
                    raise ImportError(
                        f"router/{name}{ext} changed after it was compiled ({so}): run "
                        "`make install` to compile it again, or `make clean` to run the "
                        "sources as plain Python")


def version() -> str:
    """The installed package's version; "unknown" for sources that were never installed."""
    try:
        return importlib.metadata.version("bluegreen-router")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def compiled() -> bool:
    """Whether the per-request modules run compiled (mypyc) rather than as plain Python."""
    from .dataplane import client

    return not client.__file__.endswith(".py")


_refuse_stale_builds()
