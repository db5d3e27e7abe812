"""Which build of the data plane the suite runs against: compiled (mypyc) or plain Python."""

from __future__ import annotations

import os

import pytest

import router


def test_suite_runs_the_build_it_expects():
    # `make test` sets ROUTER_EXPECT_COMPILED=1 when a C compiler is present: the suite must
    # then exercise the compiled modules (stricter at run time than the sources), not fall
    # back to plain Python in silence.
    if os.environ.get("ROUTER_EXPECT_COMPILED") != "1":
        pytest.skip(f"no compiled build expected; running {'compiled' if router.compiled() else 'plain Python'}")
    assert router.compiled()
    import importlib

    for name in router.COMPILED_MODULES:
        mod = importlib.import_module("router." + name.replace("/", "."))
        assert not mod.__file__.endswith(".py"), mod.__name__
    for name in router.C_MODULES:
        importlib.import_module("router." + name.replace("/", "."))


@pytest.mark.parametrize("folder,module,source", [("dataplane", "client", ".py"),
                                                   ("http", "_head", ".c")])
def test_stale_compiled_module_is_refused(tmp_path, folder, module, source):
    """A compiled module older than its source (edited, checked out) stops the import: a
    mypyc module's .py, and a hand-written C extension's .c."""
    pkg = tmp_path / "router"
    (pkg / folder).mkdir(parents=True)
    (tmp_path / "setup.py").write_text("")
    src = os.path.join(os.path.dirname(router.__file__), "__init__.py")
    (pkg / "__init__.py").write_text(open(src).read())
    so = pkg / folder / f"{module}.cpython-311-x86_64-linux-gnu.so"
    so.write_bytes(b"")
    (pkg / folder / (module + source)).write_text("")
    os.utime(so, (1_000_000, 1_000_000))
    code = compile((pkg / "__init__.py").read_text(), str(pkg / "__init__.py"), "exec")
    with pytest.raises(ImportError,
                       match=rf"router/{folder}/{module}\{source} changed after it was compiled"):
        exec(code, {"__file__": str(pkg / "__init__.py"), "__name__": "router_copy"})
    os.utime(so, None)  # newer than the source: fine
    exec(code, {"__file__": str(pkg / "__init__.py"), "__name__": "router_copy"})
