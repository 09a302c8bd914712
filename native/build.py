"""cffi build script for hypervisor._ivy_native (the DSM engine and runtime),
hypervisor._ivy_netem (the link emulator of ``ivyvm run --netns``) and
hypervisor._ivy_testkit (guest-view helpers for tests and the benchmark only).

Every declaration comes from the headers (native/cdefgen.py), never restated
here. setup.py names ``ffibuilder`` and ``netem_ffibuilder`` in ``cffi_modules``,
so ``pip install -e .`` compiles the production modules; the test kit is not part of it and is built
by ``make setup`` with ``python native/build.py --testkit``.

Run directly, ``python native/build.py`` rebuilds both modules in place for a
quick edit-compile loop. It writes the same ``.abi3.so`` file name pip
installs and removes any other build of the module beside it (an old
``.cpython-311-...so`` would be preferred by Python over the abi3 one, and
every later rebuild silently ignored).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

from cffi import FFI

NATIVE = Path(__file__).resolve().parent
ROOT = NATIVE.parent
PACKAGE = ROOT / "hypervisor"
RUNTIME_SOURCES = ["engine.c", "runtime.c", "rt_uffd.c", "rt_lifecycle.c", "link.c", "trace.c", "probe.c", "predict.c", "aead.c"]
RUNTIME_HEADERS = ["aead.h", "engine.h", "wire.h", "runtime.h", "trace.h"]
NETEM_SOURCES = ["netem.c"]
NETEM_HEADERS = ["netem.h"]
TESTKIT_SOURCES = ["testkit.c", "aead.c"]  # aead.c: the crypto-alone bench
TESTKIT_HEADERS = ["testkit.h"]
# What pip builds: cffi's generated C uses only the stable ABI.
ABI3_SUFFIX = ".abi3.so"


def _cdefgen():  # type: ignore[no-untyped-def]
    # setuptools executes this file by path, not as a module of a package.
    spec = importlib.util.spec_from_file_location("ivy_cdefgen", NATIVE / "cdefgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cdef_for(headers: list[str]) -> str:
    gen = _cdefgen()
    return "\n".join(gen.cdef_of((NATIVE / name).read_text()) for name in headers)


def _builder(module: str, headers: list[str], sources: list[str], libraries: tuple[str, ...] = ()) -> FFI:
    ffi = FFI()
    ffi.cdef(cdef_for(headers))
    ffi.set_source(
        module,
        "".join(f'#include "{name}"\n' for name in headers),
        sources=[os.path.relpath(NATIVE / name, ROOT) for name in sources],
        include_dirs=[os.path.relpath(NATIVE, ROOT)],
        # IVY_CFLAGS adds flags for an experiment, e.g. -DIVY_PROFILE (see rt_internal.h).
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11", *os.environ.get("IVY_CFLAGS", "").split()],
        libraries=["pthread", *libraries],
    )
    return ffi


# libcrypto (OpenSSL, package libssl-dev) seals every frame: native/aead.c.
ffibuilder = _builder("hypervisor._ivy_native", RUNTIME_HEADERS, RUNTIME_SOURCES, ("crypto",))
# The link emulator of `ivyvm run --netns` (hypervisor/netns.py): a module of its
# own, loaded only by the helper process that switches the namespaces' frames.
netem_ffibuilder = _builder("hypervisor._ivy_netem", NETEM_HEADERS, NETEM_SOURCES)


def testkit_builder() -> FFI:
    return _builder("hypervisor._ivy_testkit", TESTKIT_HEADERS, TESTKIT_SOURCES, ("crypto",))


def stale_builds(name: str, package: Path = PACKAGE) -> list[Path]:
    """Builds of hypervisor.<name> other than the abi3 one, which Python could load instead."""
    suffixes = set(importlib.machinery.EXTENSION_SUFFIXES) - {ABI3_SUFFIX}
    return sorted(p for p in package.glob(f"{name}.*") if any(p.name == name + s for s in suffixes))


def build_in_place(ffi: FFI, name: str) -> Path:
    """Compile hypervisor.<name> to hypervisor/<name>.abi3.so, the file pip's editable install made."""
    for stale in stale_builds(name):
        stale.unlink()
        print(f"removed {stale.relative_to(ROOT)}: Python would have loaded it instead of the abi3 build")
    cwd = os.getcwd()
    os.chdir(ROOT)   # the source paths above are relative to the tree
    try:
        # The target names the file inside the module's package directory.
        built = ffi.compile(tmpdir=".", target=name + ABI3_SUFFIX, verbose=False)
    finally:
        os.chdir(cwd)
    return (ROOT / built).resolve()


def main(argv: list[str]) -> int:
    if argv not in ([], ["--testkit"]):
        print("usage: python native/build.py [--testkit]  (no option: both modules)", file=sys.stderr)
        return 2
    if not argv:
        print(f"built {build_in_place(ffibuilder, '_ivy_native').relative_to(ROOT)}")
        print(f"built {build_in_place(netem_ffibuilder, '_ivy_netem').relative_to(ROOT)}")
    print(f"built {build_in_place(testkit_builder(), '_ivy_testkit').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
