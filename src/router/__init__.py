"""task-command-router: a gRPC server that runs commands and streams their output.

Serves Modal's `modal.task_command_router.TaskCommandRouter` service.
"""

__version__ = "0.1.0"
