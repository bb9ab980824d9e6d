"""The engine: processes, their output logs, the journal and retention.

It owns every child on one event loop thread (`loop`), starts them without the GIL (`spawn`,
`spawn_threads`), drains their output into segmented logs (`output`) as the log filesystem has room
(`log_space`), and records what happened (`journal`, `restore`). `core.Engine` wires the parts
together. The engine knows nothing of gRPC or images: the server drives it through `Engine` and
`execs.Exec`.
"""
