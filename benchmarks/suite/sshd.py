"""The OpenSSH reference: an sshd on a loopback port with throwaway host and user keys.

Nothing is installed at run time. Without sshd and ssh the ssh references are skipped: their
`setup` raises NotImplementedError (asv reports the benchmark as skipped; `benchmarks.tools.compare`
prints the reason in its row).
"""
from __future__ import annotations

import contextlib
import getpass
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

from .common import TMP, BenchError, free_port, stop_process, tail, with_parent_death_signal


def sshd_path() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
                                         if os.access(p, os.X_OK)), None)


def openssh_missing() -> str | None:
    """Why the ssh references cannot run here, or None if they can."""
    missing = [name for name, path in (("sshd", sshd_path()), ("ssh", shutil.which("ssh")),
                                       ("ssh-keygen", shutil.which("ssh-keygen"))) if path is None]
    if missing:
        return f"OpenSSH not installed ({', '.join(missing)} missing)"
    return None


def require_openssh() -> None:
    """In a benchmark's setup: skip (NotImplementedError) when OpenSSH is missing."""
    why = openssh_missing()
    if why:
        raise NotImplementedError(why)


class SSHServer:
    """An sshd on a loopback port with throwaway keys, and ssh command lines for it.

    `start_master()` opens one ControlMaster connection that `argv(..., mux=True)` commands share.
    """

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-sshd-", dir=TMP))
        self.proc: subprocess.Popen | None = None
        self.master: subprocess.Popen | None = None
        self.control = self.dir / "cm.sock"
        self.user = getpass.getuser()
        try:
            self._start(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, startup_timeout: float) -> None:
        d = self.dir
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                           check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=30)
        shutil.copy(d / "user_key.pub", d / "authorized_keys")
        (d / "home").mkdir()
        with contextlib.suppress(OSError):  # privilege separation directory (root only)
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.port = free_port()
        config = d / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress 127.0.0.1:{self.port}",
            f"HostKey {d / 'host_key'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}",
            f"PidFile {d / 'sshd.pid'}",
            "StrictModes no",
            "PermitRootLogin yes",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            # Multiplexed sessions over one ControlMaster connection: the default 10 limits fan-out.
            "MaxSessions 1000",
            "MaxStartups 1000",
            "LogLevel ERROR",
            # The remote command runs as `$SHELL -c CMD`, and bash started by sshd sources ~/.bashrc (on
            # these machines root's runs `pyenv init`, ~120 ms a session). An empty HOME keeps the
            # reference OpenSSH's cost, not the account's.
            f"SetEnv HOME={d / 'home'}",
            "",
        ]))
        self.log_path = d / "sshd.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                with_parent_death_signal([sshd_path() or "sshd", "-D", "-e", "-f", str(config), "-p", str(self.port)]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"sshd exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            with socket.socket() as s:
                s.settimeout(1.0)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"sshd did not listen within {startup_timeout} s:\n{tail(self.log_path)}")
            time.sleep(0.05)
        self.run("true")

    def base_argv(self) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.dir / "user_key"),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes"]

    def argv(self, remote: str, mux: bool = False) -> list[str]:
        extra = ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control}"] if mux else []
        return [*self.base_argv(), *extra, f"{self.user}@127.0.0.1", remote]

    def run(self, remote: str, mux: bool = False, timeout: float = 30.0) -> None:
        """Run one remote command, output discarded; fail with ssh's stderr if it fails."""
        done = subprocess.run(self.argv(remote, mux), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=timeout)
        if done.returncode != 0:
            raise BenchError(f"ssh {remote!r} exited {done.returncode}: "
                             f"{done.stderr.decode(errors='replace')[-1000:]}\n{tail(self.log_path)}")

    def start_master(self, timeout: float = 30.0) -> None:
        """One ControlMaster connection, a child of ours (ssh -M -N), that mux commands share."""
        if self.master is not None and self.master.poll() is None:
            return
        self.master = master = subprocess.Popen(
            [*self.base_argv(), "-M", "-N", "-o", f"ControlPath={self.control}", "-o", "ControlPersist=no",
             f"{self.user}@127.0.0.1"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self.control.exists():
            if master.poll() is not None:
                why = master.stderr.read() if master.stderr is not None else b""
                raise BenchError("ssh ControlMaster exited: " + why.decode(errors="replace"))
            if time.monotonic() > deadline:
                raise BenchError(f"ssh ControlMaster not up within {timeout} s")
            time.sleep(0.02)
        self.run("true", mux=True)

    def stop(self) -> None:
        if self.master is not None:
            stop_process(self.master, 10)
            if self.master.stderr is not None:
                self.master.stderr.close()
        if self.proc is not None:
            stop_process(self.proc, 10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SSHServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
