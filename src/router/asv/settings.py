"""The plugin's keys in asv.conf.json, and several targets as a matrix entry.

asv makes one environment per combination of its matrix; with several `router_targets`, the plugin
adds the build variable ROUTER_TARGET to every combination, one value per target, so that each
target gets its own environment (its name, results file and local directory carry the target),
built in parallel under `asv run --parallel`. A matrix that sets ROUTER_TARGET itself is left as is."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from asv import environment, util  # type: ignore[import-untyped]

from .remote import Router

TARGET_VAR = "ROUTER_TARGET"
TLS_KEYS = {"tls-ca": "router_tls_ca", "tls-cert": "router_tls_cert", "tls-key": "router_tls_key"}


def targets(conf: Any) -> list[str]:
    found = getattr(conf, "router_targets", None)
    if not isinstance(found, list) or not found or not all(isinstance(t, str) and t for t in found):
        raise util.UserError('asv.conf.json: "router_targets" must be a list of "HOST:PORT" '
                             '(environment_type "router")')
    return found


def target_of(conf: Any, tagged_env_vars: dict[tuple[str, str], str]) -> str:
    """The environment's target: its ROUTER_TARGET, else the only one configured."""
    for (_, key), value in tagged_env_vars.items():
        if key == TARGET_VAR:
            return value
    return targets(conf)[0]


def router_for(conf: Any, target: str) -> Router:
    """TLS files from the config's keys, else $ROUTER_TLS_CA/_CERT/_KEY; relative to the config."""
    tls = {}
    for flag, key in TLS_KEYS.items():
        path = getattr(conf, key, None) or os.environ.get(key.upper(), "")
        tls[flag] = os.path.abspath(path) if path else ""
    return Router(target, tls)


_iter_matrix = environment.iter_matrix


def iter_matrix(environment_type: str, pythons: list[str], conf: Any,
                explicit_selection: bool = False) -> Iterator[dict[tuple[str, str | None], Any]]:
    """asv's combinations, each once per target when there are several (see the module's docstring)."""
    for combination in _iter_matrix(environment_type, pythons, conf, explicit_selection):
        kind = environment_type or getattr(conf, "environment_type", "")
        many = kind == "router" and len(getattr(conf, "router_targets", None) or []) > 1
        if not many or any(key == TARGET_VAR for _, key in combination):
            yield combination
            continue
        for target in targets(conf):
            yield {**combination, ("env", TARGET_VAR): target}


def install() -> None:
    """Make asv's matrix expand over the targets (asv looks iter_matrix up at each call)."""
    environment.iter_matrix = iter_matrix
