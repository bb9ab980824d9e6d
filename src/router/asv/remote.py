"""The router side of the asv plugin: a command run on the router's host through `router exec`
(so asv's own process handling applies to it: its timeouts, Ctrl-C, output and error reporting),
a tar stream sent on an exec's stdin, and a file read back from an exec's stdout."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Every remote command runs under this: its working directory made first (asv's are fresh temporary
# directories), the environment's bin first on PATH as on a local virtualenv.
WRAPPER = 'mkdir -p "$1" && cd "$1" && PATH="$2/bin:$PATH" && shift 2 && exec "$@"'


@dataclass(frozen=True)
class Router:
    """Where and how to reach one router: what `router exec` takes besides the command."""
    target: str
    tls: Mapping[str, str] = field(default_factory=dict)  # --tls-ca/--tls-cert/--tls-key: path

    def exec_command(self, args: Sequence[str], env: Mapping[str, str] = {}, stdin: bool = False) -> list[str]:
        """The local command that runs `args` on the router's host, its output, exit status and
        signals passed through."""
        flags = [f"--{name}={path}" for name, path in sorted(self.tls.items()) if path]
        flags += [f"--env={key}={value}" for key, value in sorted(env.items())]
        return [sys.executable, "-m", "router.cli", "exec", f"--target={self.target}", *flags,
                *([] if stdin else ["-n"]), "--", *args]

    def in_dir(self, workdir: str, env_dir: str, args: Sequence[str], marker: str = "sh") -> list[str]:
        """`args` in `workdir`, `env_dir`/bin first on PATH; `marker` in its arguments finds it again."""
        return ["sh", "-c", WRAPPER, marker, workdir, env_dir, *args]

    def end(self, marker: str) -> None:
        """Kill the running execs with `marker` among their arguments: `router exec` passes asv's
        SIGTERM (timeout, Ctrl-C) on, but not when it comes before its handlers are in place, and
        asv's SIGKILL a second later cannot be passed on."""
        from router._proto import exec_control_pb2 as ec
        from router.client import RouterClient  # grpc only in the asv process that needs it

        tls = self.tls.get
        with RouterClient.from_env(self.target, give_up=10.0, tls_ca=tls("tls-ca", ""), tls_cert=tls("tls-cert", ""),
                                   tls_key=tls("tls-key", "")) as client:
            for info in client.execs(ec.EXEC_STATE_RUNNING):
                if marker in info.args:
                    client.kill(info.exec_id, 1.0, timeout=10.0)

    def check(self, args: Sequence[str], stdin: bytes | None = None, timeout: float | None = 600) -> bytes:
        """Run `args` there; its stdout, or CalledProcessError (with stderr) when it fails."""
        return subprocess.run(self.exec_command(args, stdin=stdin is not None), input=stdin, capture_output=True,
                              check=True, timeout=timeout).stdout

    def succeeds(self, args: Sequence[str]) -> bool:
        return subprocess.run(self.exec_command(args), capture_output=True, timeout=600).returncode == 0

    def send_tree(self, local: str, remote: str, skip: Iterable[str] = ()) -> None:
        """Replace the directory `remote` there with the files of `local` (a tar on the exec's stdin)."""
        self.check(["sh", "-c", 'rm -rf "$1" && mkdir -p "$1" && tar -x -f - -C "$1"', "sh", remote],
                   stdin=tar_of(local, skip))

    def fetch(self, remote: str, local: str) -> None:
        """Copy the file `remote` there to `local`, and remove it there."""
        data = self.check(["sh", "-c", 'cat "$1" && rm -f "$1"', "sh", remote])
        with open(local, "wb") as out:
            out.write(data)


def tar_of(directory: str, skip: Iterable[str] = ()) -> bytes:
    """An uncompressed tar of the directory's contents (names relative to it), without `skip` names
    and without Python's caches."""
    left_out = {*skip, "__pycache__", ".git"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(os.listdir(directory)):
            if name not in left_out:
                tar.add(os.path.join(directory, name), arcname=name,
                        filter=lambda info: None if os.path.basename(info.name) in left_out else info)
    return buffer.getvalue()
