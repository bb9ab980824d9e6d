"""Drives a router with Modal's own client class; run as a separate process by test_modal_client.py.

It must not import `router`: Modal's generated modules define the same proto names, and protobuf's
descriptor pool refuses a second definition in one process.

usage: python modal_driver.py URL TOKEN TASK_ID   (prints one JSON object)
"""
from __future__ import annotations

import asyncio
import json
import sys
import types

from modal.sandbox._task_command_router_client import TaskCommandRouterClient
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2


async def main(url: str, token: str, task_id: str) -> dict:
    async def fetch_access() -> api_pb2.CommandRouterAccess:
        return api_pb2.CommandRouterAccess(url=url, jwt=token)

    server_client = types.SimpleNamespace(_is_localhost=True)
    client = await TaskCommandRouterClient._connect(server_client, task_id, url, token, fetch_access=fetch_access)
    try:
        result: dict = {}
        # Sandbox.exec(env=...) arrives as a secret_sources entry with env set.
        await client.exec_start(sr_pb2.TaskExecStartRequest(
            task_id=task_id, exec_id="modal-1",
            command_args=["sh", "-c", 'read line; echo "got:$line:$GREETING"; echo err >&2; exit 4'],
            stdout_config=sr_pb2.TASK_EXEC_STDOUT_CONFIG_PIPE, stderr_config=sr_pb2.TASK_EXEC_STDERR_CONFIG_PIPE,
            secret_sources=[api_pb2.SecretSource(env=api_pb2.StringMap(contents={"GREETING": "hello"}))],
        ))
        await client.exec_stdin_write(task_id, "modal-1", 0, b"abc\n", False)
        await client.exec_stdin_write(task_id, "modal-1", 0, b"abc\n", True)  # a retry, then eof
        out = b"".join([m.data async for m in client.exec_stdio_read(task_id, "modal-1",
                                                                    api_pb2.FILE_DESCRIPTOR_STDOUT)])
        err = b"".join([m.data async for m in client.exec_stdio_read(task_id, "modal-1",
                                                                    api_pb2.FILE_DESCRIPTOR_STDERR)])
        wait = await client.exec_wait(task_id, "modal-1")
        poll = await client.exec_poll(task_id, "modal-1")
        result["stdout"] = out.decode()
        result["stderr"] = err.decode()
        result["wait_code"] = wait.code
        result["poll_code"] = poll.code
        # Resuming a read from an offset, as the client does after a broken stream.
        tail = [m.data async for m in client.exec_stdio_read(task_id, "modal-1", api_pb2.FILE_DESCRIPTOR_STDOUT,
                                                            start_offset=4)]
        result["tail"] = b"".join(tail).decode()
        return result
    finally:
        await client.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
