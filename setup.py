"""Build step: the data plane's per-request modules compiled to C with mypyc, when it can.

``pip install .`` (and ``pip install -e .``, which builds them in place) compiles the modules
that router/__init__.py lists with mypyc, the mypy project's compiler for type-annotated
Python: the same source, about a third less CPU per proxied request (README "Performance").
Without a C compiler the build warns and installs them as plain Python, which behaves the
same, slower; ``ROUTER_PURE_PYTHON=1`` asks for that. Everything else about the package is in
pyproject.toml.
"""

from __future__ import annotations

import ast
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


def compiled_modules() -> list[str]:
    """The modules run per request, as router/__init__.py lists them (COMPILED_MODULES, which
    the package reads at import to refuse stale builds); read from the file, not imported: the
    package is not installed yet when this runs. mypy type-checks them before they are compiled
    (a type error fails the build)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "router", "__init__.py")
    with open(path, encoding="utf-8") as f:
        for node in ast.parse(f.read(), path).body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "COMPILED_MODULES" for t in node.targets):
                return [f"router/{name}.py" for name in ast.literal_eval(node.value)]
    raise SystemExit(f"{path}: no COMPILED_MODULES")


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

    return mypycify(compiled_modules(), opt_level="3", group_name="router_native")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
