"""What the tests share besides fixtures (those live in the conftest.py files).

- servers: routers in this process (make_server, serving) and in their own (router_process); TASK_ID
- grpc_raw: Raw, the generated stub with auth metadata, for exact status codes
- execs: what an exec is started with (PIPES, start_request, py)
- protos: as_enum, an out-of-range enum value typed for its field
- processes: children and liveness of processes; polling: eventually, settled
- leaks: what the leak guard compares before and after each test
- proxies: a TCP proxy whose connections a test can cut
- fds: pipes made and closed for a test, non-blocking descriptors, the open descriptors
- logs, signals: the hot path's (router._fastio) test tools; reference_log: its pure-Python twin,
  the test oracle
- certs: keys and certificates made on the spot
- journal_records: journal records as the tests write them (begun, lifecycle) and the state they
  replay to (expected, same)
- drivers/: scripts run as separate processes (Modal's client cannot share a process with router)
"""
