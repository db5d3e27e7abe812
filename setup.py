"""Build step: the data plane's per-request modules compiled to C with mypyc, when it can.

``pip install .`` (and ``pip install -e .``, which builds them in place) compiles the modules
below with mypyc, the mypy project's compiler for type-annotated Python: the same source, about
a third less CPU per proxied request (README "Performance"). Without a C compiler the build
warns and installs them as plain Python, which behaves the same, slower; ``ROUTER_PURE_PYTHON=1``
asks for that. Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Run per request; type-checked by mypy before they are compiled (a type error fails the build).
COMPILED = [
    "router/http/framing.py",
    "router/http/request_head.py",
    "router/http/response_head.py",
    "router/phases.py",
    "router/balancer.py",
    "router/counters.py",
    "router/sticky.py",
    "router/table.py",
    "router/routing.py",
    "router/upstream.py",
    "router/deadlines.py",
    "router/accesslog.py",
    "router/logs.py",
    "router/context.py",
    "router/exchange.py",
    "router/client.py",
]


class OptionalBuildExt(build_ext):
    """A failed compile (no C compiler, say) leaves the plain Python modules, with a warning.

    All or nothing: the modules share one runtime library, so a partial build is removed.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, DistutilsExecError, missing compiler, ...
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            print(f"warning: the data plane was not compiled ({exc}); installing it as plain "
                  "Python: same behaviour, more CPU per request. Install a C compiler "
                  "(Debian: gcc) and reinstall to compile it.", file=sys.stderr)


def ext_modules() -> list:
    if os.environ.get("ROUTER_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    return mypycify(COMPILED, opt_level="3", group_name="router_native")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
