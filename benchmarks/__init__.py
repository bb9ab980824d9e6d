"""Benchmarks for the router: the asv suite, and the tools that drive it or read what it measured.

- suite/: the asv suite, the only package asv walks (asv.conf.json `benchmark_dir`); see its
  docstring. asv names its benchmarks relative to it (`bench_drain.Drain.track_rate`).
- tools/: command-line tools that import the suite but are no part of it (asv never imports them):
  `python -m benchmarks.tools.compare` (the table of ratios), and lab scripts; see its docstring.
- RESULTS.md: the current figure for every target, with the command that produced it.
- HISTORY.md: every measurement so far, oldest first.

From the repository top (asv 0.6 first needs `asv machine --yes` on a new machine):

    asv check --python=same
    BENCH_SIZE=tiny asv run --python=same --quick --show-stderr     # CI: every benchmark once
    asv run --python=same --set-commit-hash $(git rev-parse HEAD)   # record (full sizes: long)
    python -m benchmarks.tools.compare --from-asv                   # ... and print the table
    python -m benchmarks.tools.compare --quick                      # or measure side by side now
"""
