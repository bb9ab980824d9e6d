"""The `router` command.

grpc's C core logs its own errors to stderr (a failed TLS handshake takes five lines, a port in
use one); the command says what went wrong in one line instead, so that log is off unless asked
for with GRPC_VERBOSITY. It must be set before grpc is imported.
"""
import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
