"""The routers `router batch` spreads its jobs over, and what it knows of each (see batch.py).

The set comes from `Targets` (fixed, a targets file, dns:), looked at again every PROBE_SECS by one
thread, which also asks each router's readiness (grpc.health.v1) that often, each from a thread of
its own so that a frozen router holds up only its own probe. A router takes new jobs while it is in
the set, its readiness is SERVING and it is not set aside; it is set aside once it has not answered
for `target_timeout`, or when it lost an exec, until a probe finds it ready again.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

import grpc

from router.client import RouterClient
from router.client.targets import Targets

# How often the target set is looked at and each router's readiness asked.
PROBE_SECS = 0.5
# The longest wait between a channel's attempts to reconnect to a router gone away: one restarted
# is found within about this long (grpc's own backoff doubles to 120 s).
RECONNECT_SECS = 1.0
# The longest a probe waits for its answer (less, with a shorter --target-timeout).
PROBE_TIMEOUT = 5.0


class Host:
    """One router: its client and what the probes and calls have found."""

    def __init__(self, address: str, client: RouterClient, now: float) -> None:
        self.address = address
        self.client = client
        self.answered = now  # monotonic: its last answer (of a probe or a call), or when it was added
        self.ready = False  # the last probe's readiness
        self.aside = False  # set aside (silent too long, or lost an exec) until a probe finds it ready
        self.silent = False  # set aside for its silence: its jobs may be gone with it
        self.member = True  # in the target set now


class Fleet:
    """Every router ever in the set (a removed one keeps its running jobs); thread-safe."""

    def __init__(self, targets: Targets, connect: Callable[[str], RouterClient], target_timeout: float,
                 err: TextIO, on_change: Callable[[], None] = lambda: None) -> None:
        self._targets = targets
        self._connect = connect
        self.target_timeout = target_timeout
        self._err = err
        self.on_change = on_change  # called (from any thread) when which routers take new jobs may have changed
        self._cond = threading.Condition()
        self._hosts: dict[str, Host] = {}
        self._stopped = False
        self._threads: list[threading.Thread] = []
        self._problems: set[str] = set()
        self._last_answer = time.monotonic()  # any router's, or the run's start
        self._heard = False  # whether any router has answered yet
        self._quiet = True  # no messages for the first set
        self._membership(targets.current())
        self._quiet = False

    # -- for the batch -------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._watch_targets, "batch-targets")

    def host(self, address: str) -> Host:
        return self._hosts[address]

    def addresses(self) -> list[str]:
        with self._cond:
            return list(self._hosts)

    def eligible(self) -> list[str]:
        """The routers that take new jobs now."""
        with self._cond:
            return [a for a, h in self._hosts.items() if h.member and h.ready and not h.aside]

    def wait_answer(self, within: float) -> bool:
        """Whether some router answers a probe within `within` seconds."""
        deadline = time.monotonic() + within
        with self._cond:
            while not self._heard:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped:
                    return False
                self._cond.wait(left)
        return True

    def silent_for(self) -> float:
        """Seconds since any router last answered."""
        with self._cond:
            return time.monotonic() - self._last_answer

    def answered(self, address: str) -> None:
        with self._cond:
            self._hosts[address].answered = self._last_answer = time.monotonic()
            self._heard = True
            self._cond.notify_all()

    def refused(self, address: str) -> None:
        """It refused new execs (draining, handing over, full): none until a probe finds it ready."""
        with self._cond:
            self._hosts[address].ready = False

    def set_aside(self, address: str, why: str, silent: bool = False) -> None:
        """No new jobs for it until a probe finds it ready. `silent`: it has not answered for
        target_timeout, and the jobs it runs are to run elsewhere; else it lost some (a restart),
        each reported as its Watch finds it."""
        with self._cond:
            host = self._hosts[address]
            if host.aside and (host.silent or not silent):
                return
            host.aside, host.silent, host.ready = True, silent, False
            self._cond.notify_all()
        self._say(f"{address} set aside ({why}); " + ("its jobs run again elsewhere" if silent else
                                                       "the jobs it lost run again elsewhere"))
        self.on_change()

    def wait_back(self, address: str, since: float) -> bool:
        """After a call to it failed at `since` (monotonic): True once it has answered since, False
        once it is set aside for its silence (or the run ends)."""
        with self._cond:
            host = self._hosts[address]
            while host.answered <= since and not host.silent and not self._stopped:
                self._cond.wait(PROBE_SECS)
            return host.answered > since and not host.silent and not self._stopped

    def close(self) -> None:
        """End the probes and close every client (so their calls end); again, nothing."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._cond.notify_all()
        while self._threads:  # (one may be added as this begins: it ends at once)
            self._threads.pop().join()
        for host in self._hosts.values():
            host.client.close()

    # -- the probing threads -------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sleep(self, secs: float) -> bool:
        """Wait `secs`; False once the run has ended."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopped, secs)
            return not self._stopped

    def _watch_targets(self) -> None:
        for host in list(self._hosts.values()):
            self._spawn(self._probe, f"batch-probe-{host.address}", host)
        while self._sleep(PROBE_SECS):
            self._membership(self._targets.current())
            for problem in set(self._targets.problems) - self._problems:
                self._say(f"{problem}; keeping the targets it gave")
            self._problems = set(self._targets.problems)

    def _membership(self, addresses: list[str]) -> None:
        """Add the routers new to the set (probing them), note those no longer in it."""
        changed = False
        for address in addresses:
            with self._cond:
                host = self._hosts.get(address)
                if host is not None and not host.member:
                    host.member = changed = True
                    self._say(f"{address} is a target again")
            if host is None:
                added = Host(address, self._connect(address), time.monotonic())
                with self._cond:
                    self._hosts[address] = added
                if not self._quiet:
                    self._say(f"{address} added")
                    self._spawn(self._probe, f"batch-probe-{address}", added)
        with self._cond:
            for address, host in self._hosts.items():
                if host.member and address not in addresses:
                    host.member, changed = False, True
                    self._say(f"{address} removed: no new jobs; its running ones finish there")
        if changed:
            self.on_change()

    def _probe(self, host: Host) -> None:
        """Ask `host`'s readiness every PROBE_SECS for the whole run."""
        timeout = min(PROBE_TIMEOUT, self.target_timeout)
        while True:
            try:
                ready: bool | None = host.client.ready(timeout)
            except (grpc.RpcError, ValueError):  # ValueError: its channel closed as the run ends
                ready = None
            now = time.monotonic()
            with self._cond:
                if self._stopped:
                    return
                was = host.member and host.ready and not host.aside
                if ready is not None:
                    host.answered = self._last_answer = now
                    self._heard = True
                    host.ready = ready
                    back = host.aside and ready
                    host.aside = host.aside and not ready
                    host.silent = host.silent and not ready
                    self._cond.notify_all()
                else:  # no new jobs while it does not answer; set aside once that has lasted
                    host.ready = back = False
                silent = ready is None and now - host.answered > self.target_timeout and not host.silent
                changed = was != (host.member and host.ready and not host.aside)
            if back:
                self._say(f"{host.address} is back")
            if silent:
                self.set_aside(host.address, f"no answer for {self.target_timeout:g} s", silent=True)
            elif changed:
                self.on_change()
            if not self._sleep(PROBE_SECS):
                return

    def _say(self, line: str) -> None:
        if not self._quiet:
            print(f"router batch: {line}", file=self._err, flush=True)
