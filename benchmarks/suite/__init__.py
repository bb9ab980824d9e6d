"""The router's asv suite (asv.conf.json `benchmark_dir`): every figure comes from its classes.

The references the router is measured against are parameters of the same classes (`impl`), and the
*Ratio classes measure router and reference alternately in one setup:

- bench_drain.py: Drain[size, impl: fastio | readv | readv_pwrite], LogKind[size, kind] (the other
  kinds of log weighed for the router's log), LogKindSteady[size, kind] (the same into recycled
  storage), DrainRatio[size, reference].
- bench_stream.py: Stream[size, impl: router | bare_grpc | ssh], StreamRatio[size, reference],
  StreamRounds[size] (rounds through one server, its log slots recycled).
- bench_fanout.py: Fanout[n, impl: router | local | ssh], FanoutRatio[n, reference].
- bench_exec.py: ExecRate[in_flight: 1 | 64, impl: router | router_no_journal | local | ssh],
  ExecRatio[in_flight, reference], JournalRatio[in_flight, reference], RpcFloor[mode: sync | aio |
  aio-uvloop] (one empty gRPC call).
- bench_batch.py: BatchFanout[n, impl], BatchFanoutRatio[n, reference], BatchExecRate[impl],
  BatchExecRatio[reference] (many execs in few calls: BatchStart + Watch, `router batch`).
- bench_seek.py: Seek[size] (first message at the start and the end of a finished log).
- bench_memory.py: ServerMemory[size], IdleExecs[n] (the server's /proc/PID/status).
- bench_restart.py: Restart[execs] (time to serve a journal of finished execs after a start).
- bench_journal.py: Journal[flush_every], Replay, Compact (the journal in this process).
- bench_images.py: Images[tree: files | big_file, method: overlay | copy] (snapshot, a second
  snapshot, mount, the store's growth; `cp -a` and `tar c | tar x` of the same tree as references).
- bench_tls.py: TlsRounds[size] (stream and exec rate over TLS against plaintext).

Each bench module also declares, beside its classes, the sections of `benchmarks.tools.compare`'s
table that show them: a module-level `COMPARE = {section: rows.Section(...)}`, whose rows name the
track_* values they compare (rows.py).

Support (no benchmarks in them): common.py (sizes from BENCH_SIZE=tiny|quick|full, settings, servers
in their own processes, the sync client), alternating.py (side-by-side rounds), workloads.py
(concurrent batches over grpc.aio and subprocesses), sinks.py (where a drained pipe's bytes go),
sshd.py (the OpenSSH reference; skipped when OpenSSH is not installed, nothing is installed at run
time), bare_grpc.py (the bare grpcio server, run as a script), rows.py (what a row of compare's table
is).

asv imports every module here and takes for a benchmark every function, and every method of every
class named in a module (imported or not), whose name starts with time_, timeraw_, track_, mem_ or
peakmem_ (or Time, Track, Mem, PeakMem, Timeraw and a capital): support modules define no such
name, and bench modules import other modules' benchmark classes only as `module.Class`. Nothing
may run at import but reading the settings.
"""
