# ivyvm: the two commands a newcomer needs are `make demo` and `make test`.
# Both do all set-up themselves: a virtualenv with the package (whose cffi
# build compiles native/), then the guest programs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
IVYVM  := $(VENV)/bin/ivyvm
STAMP  := $(VENV)/.installed

NATIVE_SOURCES := $(wildcard native/*.c native/*.h native/*.py)

.PHONY: all setup libssl guests demo demo-single test check-engine protocol-doc bench clean distclean

all: setup guests

setup: $(STAMP)

# The stamp depends on the native sources so an edit to the C core rebuilds
# the compiled modules on the next `make`. The test kit (native/testkit.c)
# is a module of its own, for the tests and the benchmark, not in the package.
$(STAMP): pyproject.toml setup.py $(NATIVE_SOURCES)
	@$(MAKE) --no-print-directory libssl
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel cffi
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test,plot]'
	$(PY) native/build.py --testkit
	touch $@

# native/aead.c seals every frame with OpenSSL's libcrypto: its headers come
# with libssl-dev. As root on Debian/Ubuntu it is installed; otherwise one line says what to do.
libssl:
	@test -f /usr/include/openssl/evp.h || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing libssl-dev (OpenSSL headers for native/aead.c)"; \
	    apt-get install -y -q libssl-dev >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q libssl-dev >/dev/null; }; \
	  else echo "make: OpenSSL headers missing: install libssl-dev (e.g. sudo apt-get install libssl-dev)"; exit 1; fi; }

guests:
	$(MAKE) -C guest

# The demo: one guest whose 2 vCPUs run in two node processes sharing its RAM.
demo: setup guests
	$(IVYVM) run guest/build/hello.elf --vcpus 2 --nodes 2 --stats

# The same guest on one node.
demo-single: setup guests
	$(IVYVM) run guest/build/hello.elf --vcpus 2

test: setup guests
	$(PY) -m pytest -q tests

# The protocol engine alone, in seconds: every option combination on 2-8
# nodes against the reference model; fails if a table row is never taken.
check-engine: setup
	$(PY) -m tests.dsm.sim

# Rewrite docs/protocol.md's transition table from engine.c's table.
protocol-doc: setup
	$(PY) -m tests.dsm.table_doc

bench: setup guests
	mkdir -p bench/results
	$(PY) -m bench.run --json bench/results/bench.json

clean:
	$(MAKE) -C guest clean
	rm -rf build bench/results hypervisor/_ivy_native*.so hypervisor/_ivy_native.c \
	       hypervisor/_ivy_testkit*.so hypervisor/_ivy_testkit.c hypervisor/_ivy_netem*.so hypervisor/_ivy_netem.c

distclean: clean
	rm -rf $(VENV) *.egg-info
