"""The secret store: one file per secret id in a directory, variable name -> value.

`ID.json` ({"NAME": "value"}) or `ID.toml` (NAME = "value"), decoded and validated with msgspec.
A file readable or writable by group or others is refused (the store refuses to load, naming it):
secrets are the operator's, not the host's. Values never appear in an error message or a log line;
only ids and variable names do. Files are read at each lookup, so `router secrets set` takes
effect without a restart.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import stat
import tomllib

import msgspec

from router.config import ServerConfig, write_private

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SUFFIXES = (".json", ".toml")


def secrets_dir(config: ServerConfig) -> pathlib.Path:
    """--secrets-dir, else STATE_DIR/secrets."""
    return pathlib.Path(config.secrets_dir) if config.secrets_dir else pathlib.Path(config.state_dir) / "secrets"


class SecretError(Exception):
    """A secret that cannot be used; the message names the id and the file, never a value."""


class MissingSecret(SecretError):
    pass


def valid_id(secret_id: str) -> bool:
    return bool(_ID.fullmatch(secret_id)) and ".." not in secret_id


def _check_entries(where: str, values: dict[str, str]) -> dict[str, str]:
    for name, value in values.items():
        if not name or "=" in name or "\0" in name:
            raise SecretError(f"{where}: bad variable name {name!r} (non-empty, no '=' or NUL)")
        if "\0" in value:
            raise SecretError(f"{where}: the value of {name!r} holds a NUL byte")
    return values


class SecretStore:
    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory

    def check(self) -> list[str]:
        """Load every secret once (at server start): SecretError naming the first bad file."""
        ids = self.ids()
        for secret_id in ids:
            self.get(secret_id)
        return ids

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted({n.rsplit(".", 1)[0] for n in names if n.endswith(_SUFFIXES) and valid_id(n.rsplit(".", 1)[0])})

    def _file(self, secret_id: str) -> pathlib.Path:
        if not valid_id(secret_id):
            raise MissingSecret(f"secret {secret_id!r} not found (not a valid secret id)")
        found = [self.directory / (secret_id + s) for s in _SUFFIXES if (self.directory / (secret_id + s)).exists()]
        if not found:
            raise MissingSecret(f"secret {secret_id!r} not found")
        if len(found) > 1:
            raise SecretError(f"secret {secret_id!r} has both {found[0].name} and {found[1].name}: keep one")
        return found[0]

    def get(self, secret_id: str) -> dict[str, str]:
        path = self._file(secret_id)
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:  # checked on the file read, not on a name that could be swapped
                raise SecretError(f"secret file {path} is accessible to group or others "
                                  f"(mode {stat.S_IMODE(mode):o}): chmod 600 it")
            data = f.read()
        where = f"secret file {path}"
        try:
            if path.suffix == ".toml":
                values = msgspec.convert(tomllib.loads(data.decode()), dict[str, str])
            else:
                values = msgspec.json.decode(data, type=dict[str, str])
        except (msgspec.ValidationError, msgspec.DecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            # The decoder's message can quote the file's text: say where, not what.
            raise SecretError(f"{where} is not a map of variable names to strings ({type(e).__name__})") from None
        return _check_entries(where, values)

    def set(self, secret_id: str, values: dict[str, str]) -> pathlib.Path:
        """Write ID.json (mode 0600), merged over what the secret held; returns the file."""
        if not valid_id(secret_id):
            raise SecretError(f"{secret_id!r} is not a valid secret id (letters, digits, '.', '_', '-')")
        _check_entries(f"secret {secret_id!r}", values)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            current = self.get(secret_id)
            old = self._file(secret_id)
        except MissingSecret:
            current, old = {}, None
        current.update(values)
        path = self.directory / f"{secret_id}.json"
        write_private(path, json.dumps(current, indent=2, sort_keys=True).encode())
        if old is not None and old != path:
            old.unlink()
        return path

    def remove(self, secret_id: str) -> None:
        self._file(secret_id).unlink()
