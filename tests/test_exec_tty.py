"""`router exec -t` as a user runs it: the CLI in its own process with a pseudo-terminal of ours as
its controlling terminal, against a real server."""
from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

from router.client import RouterClient
from tests.helpers.servers import serving


class Terminal:
    """A pty pair: the CLI gets the slave as stdin, stdout, stderr and controlling terminal; the test
    types into and reads from the master, as a terminal emulator would."""

    def __init__(self, rows: int, cols: int) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.cooked = self.mode()  # a new terminal's mode, before the CLI starts
        self.output = b""

    def resize(self, rows: int, cols: int) -> None:
        """As a terminal window does: the foreground process group (the CLI) gets SIGWINCH."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def mode(self) -> list[Any]:
        return termios.tcgetattr(self.slave)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, text: bytes, timeout: float = 20.0) -> bytes:
        """All output up to and including the first `text` not yet consumed; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never came; got {self.output!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # EIO: every slave descriptor closed
                    break
        assert text in self.output, f"{text!r} never came; got {self.output!r}"
        before, _, self.output = self.output.partition(text)
        return before + text

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@contextlib.contextmanager
def router_exec(tmp_path: pathlib.Path, *args: str, rows: int = 30,
                cols: int = 100) -> Iterator[tuple[subprocess.Popen[bytes], Terminal, RouterClient]]:
    """`router exec ARGS` on a new terminal of `rows` x `cols`; yields (process, terminal, a client
    of its server). Always stopped."""
    with serving(tmp_path) as (server, client, raw):
        token = raw.token
        terminal = Terminal(rows, cols)
        # setsid --ctty: a session of its own whose controlling terminal is the pty (no preexec_fn in
        # a process with threads); setsid execs in place, as the process is not a group leader.
        proc = subprocess.Popen(["setsid", "--ctty", sys.executable, "-m", "router.cli", "exec",
                                 "--target", f"127.0.0.1:{server.port}", "--token", token, *args],
                                stdin=terminal.slave, stdout=terminal.slave, stderr=terminal.slave)
        try:
            yield proc, terminal, client
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            terminal.close()


def test_runs_on_a_terminal_of_the_local_size_and_restores_the_mode(tmp_path: pathlib.Path) -> None:
    script = "test -t 0 && echo on-a-tty; stty size; echo ready; read line; echo got:$line; exit 3"
    with router_exec(tmp_path, "-t", "--", "sh", "-c", script) as (proc, terminal, _):
        assert terminal.expect(b"ready").endswith(b"on-a-tty\r\n30 100\r\nready")
        local = terminal.mode()
        assert not local[3] & (termios.ICANON | termios.ECHO | termios.ISIG), "the local terminal is not raw"
        terminal.type(b"hello\r")  # Enter in raw mode is CR; the remote terminal makes it a newline
        terminal.expect(b"got:hello")
        assert proc.wait(20) == 3
        assert terminal.mode() == terminal.cooked


def test_window_changes_and_ctrl_c_reach_the_remote(tmp_path: pathlib.Path) -> None:
    script = ('trap "stty size" WINCH; trap "echo interrupted; exit 4" INT; echo ready; '
              "while :; do sleep 0.05; done")
    with router_exec(tmp_path, "-t", "--", "sh", "-c", script) as (proc, terminal, _):
        terminal.expect(b"ready")
        terminal.resize(41, 123)
        terminal.expect(b"41 123")
        terminal.type(b"\x03")  # a byte in raw mode: the remote terminal makes it SIGINT
        terminal.expect(b"interrupted")
        assert proc.wait(20) == 4


def test_sigterm_restores_the_terminal_and_hangs_up_the_remote(tmp_path: pathlib.Path) -> None:
    with router_exec(tmp_path, "-t", "--", "sh", "-c", "echo ready; exec sleep 60") as (proc, terminal, client):
        terminal.expect(b"ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 128 + signal.SIGTERM
        assert terminal.mode() == terminal.cooked
        (info,) = list(client.execs())
        assert client.wait(info.exec_id).signal == signal.SIGHUP


def test_without_a_terminal_on_stdin(tmp_path: pathlib.Path) -> None:
    """-t: a warning and no terminal, as ssh; -tt: a terminal anyway, its input ending at stdin's end."""
    script = "test -t 0 && echo on-a-tty || echo no-tty; read line; echo got:$line"
    with serving(tmp_path) as (server, _, raw):
        token = raw.token
        base = [sys.executable, "-m", "router.cli", "exec", "--target", f"127.0.0.1:{server.port}", "--token", token]
        once = subprocess.run([*base, "-t", "--", "sh", "-c", script], input=b"hi\n", capture_output=True,
                              timeout=60, check=False)
        assert once.returncode == 0 and once.stdout == b"no-tty\ngot:hi\n"
        assert once.stderr == b"Pseudo-terminal will not be allocated because stdin is not a terminal.\n"
        twice = subprocess.run([*base, "-tt", "--", "sh", "-c", script], input=b"hi\n", capture_output=True,
                               timeout=60, check=False)
        assert twice.returncode == 0 and twice.stderr == b""
        # The remote terminal echoes "hi" whenever it arrives: before or after the first line.
        assert b"on-a-tty\r\n" in twice.stdout and twice.stdout.endswith(b"got:hi\r\n")
