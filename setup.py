"""Build step: the data plane's per-request modules compiled to C with mypyc, when it can.

``pip install .`` (and ``pip install -e .``, which builds them in place) compiles the modules
that router/__init__.py lists with mypyc, the mypy project's compiler for type-annotated
Python: the same source, about a third less CPU per proxied request (README "Performance").
Without a C compiler the build warns and installs them as plain Python, which behaves the
same, slower; ``ROUTER_PURE_PYTHON=1`` asks for that. The response head's check and rewrite
is also built from hand-written C (router/http/_head.c), on its own: either build can fail
without the other. Everything else about the package is in
pyproject.toml.
"""

from __future__ import annotations

import ast
import os
import sys

from setuptools import Extension, setup
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

    Builds each all or nothing: the mypyc modules (they share one runtime library, so a partial
    build is removed), and each hand-written C function (router/http/_head.c, _fields.c; the
    Python version runs without it). One failing leaves the others.
    """

    def run(self) -> None:
        everything = self.extensions
        compiler = self.compiler  # a name (or None): run() replaces it with the compiler made
        parts = [("the data plane was not compiled",
                  [e for e in everything if e.name not in C_EXTENSIONS])] + [
                     (f"{what} was not built", [e for e in everything if e.name == name])
                     for name, what in C_EXTENSIONS.items()]
        try:
            for what, part in parts:
                if not part:
                    continue
                self.extensions = part
                self.compiler = compiler
                try:
                    super().run()
                except Exception as exc:  # CompileError, DistutilsExecError, no compiler, ...
                    for ext in part:
                        path = self.get_ext_fullpath(ext.name)
                        if os.path.exists(path):
                            os.remove(path)
                    print(f"warning: {what} ({exc}); installing it as plain Python: same "
                          "behaviour, more CPU per request. Install a C compiler (Debian: gcc) "
                          "and reinstall to compile it.", file=sys.stderr)
        finally:
            self.extensions = everything


# The response head checked and rewritten in one pass (router.http.response_head uses it when
# it is built).
HEAD_EXTENSION = "router.http._head"
# A request head's fields read in one pass (router.http.request_head uses it when it is built).
FIELDS_EXTENSION = "router.http._fields"
C_EXTENSIONS = {HEAD_EXTENSION: "the response head's C function",
                FIELDS_EXTENSION: "the request head's fields' C function"}


def ext_modules() -> list:
    if os.environ.get("ROUTER_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    return mypycify(compiled_modules(), opt_level="3", group_name="router_native") + [
        Extension(HEAD_EXTENSION, ["router/http/_head.c"], extra_compile_args=["-O2"]),
        Extension(FIELDS_EXTENSION, ["router/http/_fields.c"], extra_compile_args=["-O2"])]


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
