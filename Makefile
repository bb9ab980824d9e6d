# Developer shortcuts; CI runs .ci/run. Uses the active Python (a venv with `pip install -e '.[test]'`).
PYTHON ?= python

.PHONY: build debug asan test test-dev typecheck lint proto bench-quick bench

build:
	$(PYTHON) -m pip install -e '.[test]' --no-build-isolation -q

# Line tracing, assertions, no optimisation, annotation HTML next to the .pyx and each fastio/*.pxi.
debug:
	ROUTER_DEBUG=1 ROUTER_CYTHON_ANNOTATE=1 $(PYTHON) -m pip install -e . --no-build-isolation -q

# The hot path's tests under AddressSanitizer.
asan:
	ROUTER_SANITIZE=1 $(PYTHON) -m pip install -e . --no-build-isolation -q
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so) PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 \
		$(PYTHON) -m pytest tests/fastio -q
	$(PYTHON) -m pip install -e . --no-build-isolation -q

test:
	$(PYTHON) -m pytest

test-dev:
	$(PYTHON) -X dev -m pytest

# mypy: strict on src/, checked on tests/ and benchmarks/ (pyproject.toml).
typecheck:
	$(PYTHON) -m mypy

# ruff: pyflakes, pycodestyle, import order, pyupgrade, bugbear (pyproject.toml).
lint:
	$(PYTHON) -m ruff check src tests benchmarks scripts setup.py

proto:
	$(PYTHON) scripts/gen_proto.py

# The benchmark suite (benchmarks/suite/; needs '.[bench]' and, once per machine, `asv machine --yes`).
# Every benchmark once at tiny sizes (fails if any errors), then the ratios measured side by side
# at quick sizes.
bench-quick:
	$(PYTHON) -m asv check --python=same
	BENCH_SIZE=tiny $(PYTHON) -m asv run --python=same --quick --show-stderr
	$(PYTHON) -m benchmarks.tools.compare --quick

# Full sizes (the figures in benchmarks/RESULTS.md; long): asv records this commit's results, and
# the table of ratios is rendered from them.
bench:
	$(PYTHON) -m asv run --python=same --show-stderr --set-commit-hash $$(git rev-parse HEAD)
	$(PYTHON) -m benchmarks.tools.compare --from-asv
