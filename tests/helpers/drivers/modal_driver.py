"""Drives a router with Modal's own client class; run as a separate process by test_modal_client.py.

It must not import `router`: Modal's generated modules define the same proto names, and protobuf's
descriptor pool refuses a second definition in one process.

usage: python modal_driver.py URL TOKEN TASK_ID   (prints one JSON object)
       python modal_driver.py URL TOKEN TASK_ID follow EXEC_ID
           reads EXEC_ID's stdout slowly (a line "reading" once the first bytes came), then prints
           {"length": N, "sha256": HEX}
       python modal_driver.py URL TOKEN TASK_ID start EXEC_ID ARGS...
           starts ARGS as EXEC_ID, retrying as Modal's client does, then prints {"started": EXEC_ID}
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import types

from modal.sandbox._task_command_router_client import TaskCommandRouterClient
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2


async def connect(url: str, token: str, task_id: str) -> TaskCommandRouterClient:
    async def fetch_access() -> api_pb2.CommandRouterAccess:
        return api_pb2.CommandRouterAccess(url=url, jwt=token)

    server_client = types.SimpleNamespace(_is_localhost=True)
    return await TaskCommandRouterClient._connect(server_client, task_id, url, token, fetch_access=fetch_access)


async def follow(url: str, token: str, task_id: str, exec_id: str) -> dict:
    """Read a stream slowly, so that the test can kill and restart the router meanwhile: the
    client must resume by offset and get every byte once."""
    client = await connect(url, token, task_id)
    try:
        digest = hashlib.sha256()
        length = 0
        async for message in client.exec_stdio_read(task_id, exec_id, api_pb2.FILE_DESCRIPTOR_STDOUT):
            if not length:
                print("reading", flush=True)
            digest.update(message.data)
            length += len(message.data)
            await asyncio.sleep(0.02)
        return {"length": length, "sha256": digest.hexdigest()}
    finally:
        await client.close()


async def start(url: str, token: str, task_id: str, exec_id: str, args: list[str]) -> dict:
    client = await connect(url, token, task_id)
    try:
        await client.exec_start(sr_pb2.TaskExecStartRequest(task_id=task_id, exec_id=exec_id, command_args=args))
        return {"started": exec_id}
    finally:
        await client.close()


async def main(url: str, token: str, task_id: str) -> dict:
    client = await connect(url, token, task_id)
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
    url, token, task_id = sys.argv[1:4]
    if sys.argv[4:5] == ["follow"]:
        print(json.dumps(asyncio.run(follow(url, token, task_id, sys.argv[5]))))
    elif sys.argv[4:5] == ["start"]:
        print(json.dumps(asyncio.run(start(url, token, task_id, sys.argv[5], sys.argv[6:]))))
    else:
        print(json.dumps(asyncio.run(main(url, token, task_id))))
