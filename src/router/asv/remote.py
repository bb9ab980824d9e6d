"""The router side of the asv plugin: a command run on the router's host through `router exec`
(so asv's own process handling applies to it: its timeouts, Ctrl-C, output and error reporting),
a tar stream sent on an exec's stdin, and a file read back from an exec's stdout."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Mapping, Sequence
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
        flags = [*self.flags(), *(f"--env={key}={value}" for key, value in sorted(env.items()))]
        return [sys.executable, "-m", "router.cli", "exec", *flags, *([] if stdin else ["-n"]), "--", *args]

    def in_dir(self, workdir: str, env_dir: str, args: Sequence[str], marker: str = "sh") -> list[str]:
        """`args` in `workdir`, `env_dir`/bin first on PATH; `marker` in its arguments finds it again."""
        return ["sh", "-c", WRAPPER, marker, workdir, env_dir, *args]

    def end(self, marker: str) -> None:
        """Kill the running execs with `marker` among their arguments (router.asv_proxy says why)."""
        subprocess.run([*self.proxy(), "--end", marker], timeout=60, check=False)

    def proxy(self) -> list[str]:
        return [sys.executable, "-m", "router.asv_proxy", *self.flags()]

    def flags(self) -> list[str]:
        return [f"--target={self.target}", *(f"--{name}={path}" for name, path in sorted(self.tls.items()) if path)]

    def check(self, args: Sequence[str], stdin: bytes | None = None, timeout: float | None = 600) -> bytes:
        """Run `args` there; its stdout, or CalledProcessError (with stderr) when it fails."""
        return subprocess.run(self.exec_command(args, stdin=stdin is not None), input=stdin, capture_output=True,
                              check=True, timeout=timeout).stdout

    def succeeds(self, args: Sequence[str]) -> bool:
        return subprocess.run(self.exec_command(args), capture_output=True, timeout=600).returncode == 0

    def send_tree(self, tar: bytes, remote: str, keep: bool = False) -> None:
        """Replace the directory `remote` there with the files of `tar` (on the exec's stdin),
        unpacked beside it and renamed, so that no command sees it half made; `keep`: leave one
        already there as it is (a name that says its content: several asv runs may send it at once)."""
        script = ('t="$1.part.$$" && rm -rf "$t" && mkdir -p "$t" && tar -x -f - -C "$t" && '
                  'if [ -n "$2" ] && [ -d "$1" ]; then rm -rf "$t"; else rm -rf "$1" && mv "$t" "$1"; fi')
        self.check(["sh", "-c", script, "sh", remote, "keep" if keep else ""], stdin=tar)


def tar_of(paths: Mapping[str, str]) -> bytes:
    """An uncompressed tar of each local path (a file, or a directory with what it holds) under its
    name, without Python's caches and git's metadata."""
    left_out = {"__pycache__", ".git"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, path in sorted(paths.items()):
            tar.add(path, arcname=name, filter=lambda info: None if os.path.basename(info.name) in left_out else info)
    return buffer.getvalue()


def tree(directory: str) -> dict[str, str]:
    """What a directory holds, for tar_of: its contents at the tar's top."""
    return {name: os.path.join(directory, name) for name in os.listdir(directory)}
