"""Benchmarks for the router: an asv suite and a comparison script.

- `bench_<area>.py`: the asv suite (drain, stream, fanout, exec, seek, memory). Servers under
  measurement run in their own processes (`common.RouterProcess`, `common.BareGrpcProcess`).
  From the repository top: `asv check --python=same`, then `asv run --python=same --quick`
  (asv 0.6 refuses to run non-interactively until the machine is described once: `asv machine --yes`).
- `compare.py`: `python -m benchmarks.compare [--quick] [--only drain,stream,...]` measures the router
  against references it starts itself (raw readv/pwrite, a bare grpcio server, OpenSSH, local
  subprocesses) in alternating rounds and prints a markdown table of ratios.
- `common.py` (servers, sshd, pipes, /proc), `workloads.py` (concurrent execs over grpc.aio and their
  references), `bare_grpc.py` (the bare grpcio server, run as a script).
"""
