"""Drives a router's image RPCs with Modal's own client; run as a separate process by test_modal_images.py.

It must not import `router` (see modal_driver.py). It reads one JSON command a line on stdin and answers
each with one JSON line on stdout: the result, or {"error": "module.Class", "message": ...}.

    {"op": "snapshot", "via": V, "path": P, "snapshot_id": S, "ttl": N, "key": HEX}  -> {"image_id", "type"}
    {"op": "mount", "via": V, "path": P, "image_id": I, "key": HEX}                  -> {}
    {"op": "unmount", "via": V, "path": P}                                           -> {}

(snapshot_id, ttl and key are optional.) V is how the call is made:
- "client": TaskCommandRouterClient's snapshot_directory / mount_image / unmount_image with Modal's
  generated request messages;
- "sandbox": the public modal.Sandbox methods snapshot_directory / mount_image / unmount_image, which run
  modal/sandbox/_common.py's *_via_tcr functions unchanged (snapshot_id is then Modal's own uuid4).

usage: python modal_images_driver.py URL TOKEN TASK_ID
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

import modal
from modal._utils.async_utils import synchronize_api
from modal.client import _Client
from modal.sandbox._impl_v1 import SandboxImplV1
from modal.sandbox._sandbox import _Sandbox
from modal.sandbox._task_command_router_client import TaskCommandRouterClient
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2

SANDBOX_ID = "sb-" + "a" * 22  # V1-shaped, so Modal picks the V1 implementation this subclasses
TIMEOUT = 30


class RouterSandboxImpl(SandboxImplV1):
    """Modal's V1 Sandbox implementation, given the task id up front (so no SandboxGetTaskId call) and
    with the one step that asks Modal's control plane for the router's URL and JWT answered with ours."""

    access: api_pb2.CommandRouterAccess

    async def _open_command_router_client(self, task_id: str) -> TaskCommandRouterClient:
        async def fetch_access() -> api_pb2.CommandRouterAccess:
            return self.access

        return await TaskCommandRouterClient.connect(self.client, task_id, fetch_access)


async def _attach(impl: RouterSandboxImpl) -> _Sandbox:
    return _Sandbox._from_impl(impl, None)


def sandbox_on(url: str, token: str, task_id: str) -> tuple[modal.Sandbox, RouterSandboxImpl]:
    # A real Modal client that is never opened: these code paths only read its `_is_localhost` (which lets
    # the router be plain http) and store it in the Image handles they return.
    client = _Client("http://127.0.0.1:1", api_pb2.CLIENT_TYPE_CLIENT, None)
    impl = RouterSandboxImpl(client, SANDBOX_ID, task_id=task_id)
    impl.access = api_pb2.CommandRouterAccess(url=url, jwt=token)
    # Modal builds Sandbox handles on its own event loop; synchronize_api runs _attach there and hands
    # back the public (blocking) modal.Sandbox.
    return synchronize_api(_attach)(impl), impl


def _key(cmd: dict[str, Any]) -> bytes | None:
    return bytes.fromhex(cmd["key"]) if "key" in cmd else None


async def _via_client(impl: RouterSandboxImpl, cmd: dict[str, Any]) -> dict[str, Any]:
    task_id = await impl.get_task_id()
    client = await impl.get_command_router_client(task_id)  # the same TaskCommandRouterClient the Sandbox uses
    path = cmd["path"].encode()
    key = _key(cmd)
    if cmd["op"] == "snapshot":
        snapshot = sr_pb2.TaskSnapshotDirectoryRequest(
            task_id=task_id, path=path, snapshot_id=cmd.get("snapshot_id", ""), ttl_seconds=cmd.get("ttl"),
            customer_supplied_encryption_key=key)
        response = await client.snapshot_directory(snapshot, timeout=TIMEOUT)
        return {"image_id": response.image_id, "type": type(response).__name__}
    if cmd["op"] == "mount":
        await client.mount_image(sr_pb2.TaskMountDirectoryRequest(
            task_id=task_id, path=path, image_id=cmd["image_id"], customer_supplied_encryption_key=key))
        return {}
    await client.unmount_image(sr_pb2.TaskUnmountDirectoryRequest(task_id=task_id, path=path))
    return {}


def _via_sandbox(sandbox: modal.Sandbox, images: dict[str, modal.Image], cmd: dict[str, Any]) -> dict[str, Any]:
    if cmd["op"] == "snapshot":
        ttl = {"ttl": cmd["ttl"]} if "ttl" in cmd else {}
        image = sandbox.snapshot_directory(cmd["path"], timeout=TIMEOUT, _experimental_encryption_key=_key(cmd), **ttl)
        images[image.object_id] = image
        return {"image_id": image.object_id, "type": type(image).__name__}
    if cmd["op"] == "mount":
        image_id = cmd["image_id"]
        # The Image object snapshot_directory returned, as a user would pass it; else one by id.
        given = images.get(image_id)
        if given is None:
            given = modal.Image.from_scratch() if image_id == "" else modal.Image.from_id(image_id)
        sandbox.mount_image(cmd["path"], given, _experimental_encryption_key=_key(cmd))
        return {}
    sandbox.unmount_image(cmd["path"])
    return {}


def main(url: str, token: str, task_id: str) -> None:
    # Answers go to the real stdout only; anything else printed to stdout lands on stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sandbox, impl = sandbox_on(url, token, task_id)
    via_client = synchronize_api(_via_client)
    images: dict[str, modal.Image] = {}
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            try:
                if cmd["via"] == "client":
                    answer = via_client(impl, cmd)
                else:
                    answer = _via_sandbox(sandbox, images, cmd)
            except Exception as e:
                traceback.print_exc()
                answer = {"error": f"{type(e).__module__}.{type(e).__qualname__}", "message": str(e)}
            answers.write(json.dumps(answer) + "\n")
    finally:
        sandbox.detach()


if __name__ == "__main__":
    main(*sys.argv[1:4])
