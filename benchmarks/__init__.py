"""Benchmarks for the router: one asv suite, and the tools that read it.

Every figure comes from the asv classes in `bench_<area>.py`; the references the router is measured
against are parameters of the same classes (`impl`), and the *Ratio classes measure router and
reference alternately in one setup:

- bench_drain.py: Drain[size, impl: fastio | readv | readv_pwrite], LogKind[size, kind] (the other
  kinds of log issue 3 weighed), DrainRatio[size, reference].
- bench_stream.py: Stream[size, impl: router | bare_grpc | ssh], StreamRatio[size, reference].
- bench_fanout.py: Fanout[n, impl: router | local | ssh], FanoutRatio[n, reference].
- bench_exec.py: ExecRate[in_flight: 1 | 64, impl: router | local | ssh], ExecRatio[in_flight,
  reference], RpcFloor[mode: sync | aio | aio-uvloop] (one empty gRPC call).
- bench_seek.py: Seek[size] (first message at the start and the end of a finished log).
- bench_memory.py: ServerMemory[size], IdleExecs[n] (the server's /proc/PID/status).
- bench_images.py: Images[tree: files | big_file, method: overlay | copy] (snapshot, a second
  snapshot, mount, the store's growth; `cp -a` and `tar c | tar x` of the same tree as references).

Helpers: common.py (sizes from BENCH_SIZE=tiny|quick|full, settings, servers in their own processes,
the sync client), sinks.py (where a drained pipe's bytes go), sshd.py (the OpenSSH reference; skipped
when OpenSSH is not installed, nothing is installed at run time), workloads.py (concurrent batches over
grpc.aio and subprocesses), alternating.py (side-by-side rounds), bare_grpc.py (the bare grpcio
server, run as a script).

Tools: compare.py (`python -m benchmarks.compare`: the table of ratios, by running the classes or from
asv's results), asv_results.py (reads them), load.py (a steady load on a router you started, for
py-spy).

From the repository top (asv 0.6 first needs `asv machine --yes` on a new machine):

    asv check --python=same
    BENCH_SIZE=tiny asv run --python=same --quick --show-stderr     # CI: every benchmark once
    asv run --python=same --set-commit-hash $(git rev-parse HEAD)   # record (full sizes: long)
    python -m benchmarks.compare --from-asv                         # ... and print the table
    python -m benchmarks.compare --quick                            # or measure side by side now
"""
