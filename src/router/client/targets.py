"""Which routers make up a fleet, resolved again as it changes: `Targets`.

A target is given as `HOST:PORT` (fixed), `dns:NAME:PORT` (every A and AAAA record of NAME, resolved
again every `dns_secs`: a Kubernetes headless Service), or through a file of such lines (read again
when its size or modification time changes; blank lines and `#` comments are skipped). `current()`
is the set at this moment, as `HOST:PORT` addresses (IPv6 in brackets) that gRPC channels take.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence

DNS_PREFIX = "dns:"
# How often a dns: target is resolved again: a few seconds, as a watcher of a headless Service's
# endpoints would see a new pod (its record has a 30 s TTL by default; the resolver may cache).
DNS_SECS = 5.0


class TargetError(ValueError):
    """A target that cannot be used: a malformed spec, an unreadable file."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """One target as given: `host` and `port`, with `dns` when `host` is a name to resolve again."""
    host: str
    port: int
    dns: bool = False

    @classmethod
    def parse(cls, text: str) -> Spec:
        text = text.strip()
        dns = text.startswith(DNS_PREFIX)
        host, colon, port = text.removeprefix(DNS_PREFIX).rpartition(":")
        host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            form = "dns:NAME:PORT" if dns else "HOST:PORT or dns:NAME:PORT"
            raise TargetError(f"not {form} with a port in 1-65535: {text!r}")
        return cls(host, int(port), dns)

    def address(self, host: str | None = None) -> str:
        """HOST:PORT as gRPC takes it: an IPv6 literal in brackets."""
        host = host or self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


Resolver = Callable[[str, int], list[str]]


def resolve_all(name: str, port: int) -> list[str]:
    """Every A and AAAA record of `name` (its IPv4 addresses first), each once."""
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    found = dict.fromkeys(str(info[4][0]) for info in infos)
    return sorted(found, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))


def read_specs(path: str | os.PathLike[str]) -> list[Spec]:
    """A targets file's specs; TargetError naming the file and line if one is malformed."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TargetError(f"cannot read the targets file {os.fspath(path)}: {e}") from None
    specs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                specs.append(Spec.parse(line))
            except TargetError as e:
                raise TargetError(f"{os.fspath(path)}:{number}: {e}") from None
    return specs


class Targets:
    """The fleet's addresses from fixed and dns: specs and targets files, each source looked at again
    when it may have changed. Thread-safe. A file that cannot be read or parsed, or a name that
    cannot be resolved, keeps its last good addresses (reported through `problems`), except at the
    first look, where it raises TargetError; a name with no records (NXDOMAIN, as a headless Service
    with no ready pod answers) has none."""

    def __init__(self, specs: Iterable[str | Spec] = (), files: Sequence[str | os.PathLike[str]] = (), *,
                 dns_secs: float = DNS_SECS, resolver: Resolver = resolve_all) -> None:
        self._specs = [s if isinstance(s, Spec) else Spec.parse(s) for s in specs]
        self._files = [os.fspath(f) for f in files]
        self._dns_secs = dns_secs
        self._resolver = resolver
        self._lock = threading.Lock()
        self._file_seen: dict[str, tuple[int, int, int]] = {}  # path -> what it was when last read
        self._file_specs: dict[str, list[Spec]] = {}
        self._resolved: dict[Spec, list[str]] = {}
        self._resolved_at: dict[Spec, float] = {}
        self.problems: list[str] = []  # since the last current(): what could not be looked at
        if not self._specs and not self._files:
            raise TargetError("no target given")
        self.current(strict=True)

    def current(self, strict: bool = False) -> list[str]:
        """The addresses now, in the order given, each once."""
        with self._lock:
            self.problems = []
            specs = list(self._specs)
            for path in self._files:
                specs.extend(self._file(path, strict))
            addresses: dict[str, None] = {}
            for spec in specs:
                for address in self._addresses(spec, strict):
                    addresses[address] = None
            return list(addresses)

    def _file(self, path: str, strict: bool) -> list[Spec]:
        try:
            stat = os.stat(path)
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # the inode: a file renamed into place
            if self._file_seen.get(path) != seen:
                self._file_specs[path] = read_specs(path)
                self._file_seen[path] = seen
        except (OSError, TargetError) as e:
            if strict:
                raise TargetError(str(e) if isinstance(e, TargetError) else
                                  f"cannot read the targets file {path}: {e.strerror}") from None
            self.problems.append(str(e))
        return self._file_specs.get(path, [])

    def _addresses(self, spec: Spec, strict: bool) -> list[str]:
        if not spec.dns:
            return [spec.address()]
        now = time.monotonic()
        if spec in self._resolved and now - self._resolved_at[spec] < self._dns_secs:
            return self._resolved[spec]
        try:
            self._resolved[spec] = [spec.address(a) for a in self._resolver(spec.host, spec.port)]
        except socket.gaierror as e:
            if e.errno == socket.EAI_NONAME:
                self._resolved[spec] = []
            elif strict:
                raise TargetError(f"cannot resolve {spec.host}: {e.strerror}") from None
            else:
                self.problems.append(f"cannot resolve {spec.host}: {e.strerror}")
        self._resolved_at[spec] = now
        return self._resolved.get(spec, [])
