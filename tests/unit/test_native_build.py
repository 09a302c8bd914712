"""The compiled modules' declarations come from the headers, and the quick rebuild never shadows pip's build."""
from __future__ import annotations

import importlib.machinery
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cffi import FFI

from hypervisor import _ivy_native, _ivy_netem, _ivy_testkit
from native.cdefgen import cdef_of, public_names

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
MODULES = {"engine.h": _ivy_native, "wire.h": _ivy_native, "runtime.h": _ivy_native, "testkit.h": _ivy_testkit,
           "netem.h": _ivy_netem}


def exported(module, name: str) -> bool:  # type: ignore[no-untyped-def]
    if name.startswith("struct "):
        try:
            module.ffi.typeof(name)
        except module.ffi.error:
            return False
        return True
    return hasattr(module.lib, name)


@pytest.mark.parametrize("header", sorted(MODULES))
def test_every_public_declaration_of_a_header_is_exported(header: str) -> None:
    names = public_names((NATIVE / header).read_text())
    assert len(names) > 3, names   # the scan found the header's declarations at all
    missing = sorted(name for name in names if not exported(MODULES[header], name))
    assert not missing, f"{header} declares {missing}, which the compiled module does not export"


def test_generated_cdef_parses_for_all_headers_together() -> None:
    ffi = FFI()
    ffi.cdef("\n".join(cdef_of((NATIVE / h).read_text()) for h in ("engine.h", "wire.h", "runtime.h", "testkit.h")))
    assert ffi.typeof("struct ivy_wire_hdr").kind == "struct"


def test_generator_leaves_values_to_the_compiler_and_bodies_out() -> None:
    cdef = cdef_of("#define IVY_X 7u /* seven */\n#define IVY_G_H\n_Static_assert(1, \"x\");\n"
                   "struct ivy_s { int a[IVY_X]; };\n"
                   "static inline int ivy_f(const char buf[IVY_X], int n) { if (n) { return 1; } return 0; }\n")
    assert "#define IVY_X ..." in cdef and "7" not in cdef and "IVY_G_H" not in cdef
    assert "_Static_assert" not in cdef and "return" not in cdef
    assert "int a[...];" in cdef and "int ivy_f(const char buf[], int n);" in cdef


def test_production_module_carries_no_test_kit() -> None:
    kit_functions = {n for n in public_names((NATIVE / "testkit.h").read_text()) if not n.startswith("IVY_")}
    assert kit_functions and not any(hasattr(_ivy_native.lib, name) for name in kit_functions)


def test_quick_rebuild_replaces_the_abi3_build_and_removes_shadowing_ones(tmp_path: Path) -> None:
    """`python native/build.py` in a copy of the tree: a stale cpython-3xx build beside the package
    would be loaded in preference to the abi3 one; the rebuild must remove it and write abi3."""
    shutil.copytree(NATIVE, tmp_path / "native", ignore=shutil.ignore_patterns("*.o", "__pycache__"))
    package = tmp_path / "hypervisor"
    package.mkdir()
    (package / "__init__.py").write_text("")
    specific = next(s for s in importlib.machinery.EXTENSION_SUFFIXES if s.startswith(".cpython"))
    stale = package / f"_ivy_native{specific}"
    stale.write_bytes(b"an old build")
    result = subprocess.run([sys.executable, "native/build.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert not stale.exists(), "a build that shadows the abi3 module was left behind"
    assert "removed hypervisor/_ivy_native" in result.stdout
    assert sorted(p.name for p in package.glob("*.so")) == ["_ivy_native.abi3.so", "_ivy_netem.abi3.so",
                                                             "_ivy_testkit.abi3.so"]
    probe = subprocess.run([sys.executable, "-c", "import hypervisor._ivy_native as m, hypervisor._ivy_testkit as k; "
                            "print(m.__file__); print(k.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == [str(package / "_ivy_native.abi3.so"), str(package / "_ivy_testkit.abi3.so")], \
        probe.stderr
