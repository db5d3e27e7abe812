"""Build step: the data plane's per-request modules compiled to C with mypyc, when it can.

``pip install .`` (and ``pip install -e .``, which builds them in place) compiles the modules
that router/__init__.py lists with mypyc, the mypy project's compiler for type-annotated
Python: the same source, about a third less CPU per proxied request (README "Performance").
Without a C compiler the build warns and installs them as plain Python, which behaves the
same, slower; ``ROUTER_PURE_PYTHON=1`` asks for that. Two hand-written C functions (the
response head's check and rewrite, a request head's fields: router/__init__.py's C_MODULES) are
built on their own: any of the builds can fail without the others. Everything else about the
package is in pyproject.toml.
"""

from __future__ import annotations

import ast
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def listed(name: str) -> list[str]:
    """A tuple of module paths that router/__init__.py lists (COMPILED_MODULES, C_MODULES, which
    the package reads at import to refuse stale builds); read from the file, not imported: the
    package is not installed yet when this runs."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "router", "__init__.py")
    with open(path, encoding="utf-8") as f:
        for node in ast.parse(f.read(), path).body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return list(ast.literal_eval(node.value))
    raise SystemExit(f"{path}: no {name}")


def compiled_modules() -> list[str]:
    """The modules run per request, compiled by mypyc; mypy type-checks them before they are
    compiled (a type error fails the build)."""
    return [f"router/{name}.py" for name in listed("COMPILED_MODULES")]


# The hand-written C functions (router/http/_head.c: the response head checked and rewritten
# in one pass; _fields.c: a request head's fields read in one pass), by extension name; the
# Python modules that use them fall back to their own code when one is not built.
C_EXTENSIONS = {"router." + name.replace("/", "."): f"router/{name}.c"
                for name in listed("C_MODULES")}


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
                     (f"{source} was not built", [e for e in everything if e.name == name])
                     for name, source in C_EXTENSIONS.items()]
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



def ext_modules() -> list:
    if os.environ.get("ROUTER_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    return mypycify(compiled_modules(), opt_level="3", group_name="router_native") + [
        Extension(name, [source], extra_compile_args=["-O2"])
        for name, source in C_EXTENSIONS.items()]


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
