"""Tools around the asv suite (benchmarks/suite/), outside the package asv walks: they import the
suite's modules; asv never imports them. Run from the repository top:

- compare.py: `python -m benchmarks.tools.compare`: the table of ratios, router against its
  references side by side, by running the suite's classes here or from asv's results
  (`--from-asv`); asv_results.py reads those.
- ab_trees.py: `python -m benchmarks.tools.ab_trees`: the BatchStart + Watch exec rate of routers
  built from different source trees, side by side (an A/B between commits, or of one tree with
  different `router serve` flags, `--flags`).
- metrics_cost.py: `python -m benchmarks.tools.metrics_cost`: what metrics add per exec and per
  call, and what a scrape takes, timed piece by piece.
- stream_cpu.py: `python -m benchmarks.tools.stream_cpu`: where a stream's CPU goes (server, its
  children, the client), routers against the bare grpcio server.
- message_cost.py: `python -m benchmarks.tools.message_cost`: what one server-stream message costs
  in grpcio, whatever it holds.
- load.py: `python -m benchmarks.tools.load`: a steady load on a router you started, for profiling
  it (py-spy).
"""
