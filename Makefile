# Developer shortcuts; CI runs .ci/run. Uses the active Python (a venv with `pip install -e '.[test]'`).
PYTHON ?= python

.PHONY: build debug asan test test-dev typecheck proto bench-quick bench

build:
	$(PYTHON) -m pip install -e '.[test]' --no-build-isolation -q

# Line tracing, assertions, no optimisation, annotation HTML next to the .pyx.
debug:
	ROUTER_DEBUG=1 ROUTER_CYTHON_ANNOTATE=1 $(PYTHON) -m pip install -e . --no-build-isolation -q

# The hot path's tests under AddressSanitizer.
asan:
	ROUTER_SANITIZE=1 $(PYTHON) -m pip install -e . --no-build-isolation -q
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so) PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 \
		$(PYTHON) -m pytest tests/test_fastio.py -q
	$(PYTHON) -m pip install -e . --no-build-isolation -q

test:
	$(PYTHON) -m pytest

test-dev:
	$(PYTHON) -X dev -m pytest

typecheck:
	$(PYTHON) -m mypy

proto:
	$(PYTHON) scripts/gen_proto.py

bench-quick:
	$(PYTHON) -m benchmarks.compare --quick
	$(PYTHON) -m asv check --python=same

bench:
	$(PYTHON) -m benchmarks.compare
