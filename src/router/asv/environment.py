"""`RouterEnvironment`: an asv environment whose virtualenv lives on a router's host; asv's
commands in it (pip, the build, every benchmark process) run there through `router exec`.

asv keeps its local view of the environment as usual (its directory under env_dir holds the info
and install-status files, the checkout of the commit and the build cache); the router's host holds
the same directory's counterpart: the virtualenv, the checkout (sent as a tar), asv's runner script
and the benchmark suite (sent as a tar, once per `asv` command). Local paths in a command are
mapped to their counterparts; any other absolute local path is a file the command writes (a result
file): it is written in a scratch directory there and copied back after the command succeeded."""
from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import subprocess
import tempfile
import uuid
from typing import Any

from asv import environment, util  # type: ignore[import-untyped]
from asv.console import log  # type: ignore[import-untyped]
from asv.runner import BENCHMARK_RUN_SCRIPT  # type: ignore[import-untyped]

from .remote import tar_of, tree
from .settings import TARGET_VAR, router_for, target_of

# Without a build_command/install_command of its own, the project is installed from its checkout
# there (asv's default builds a wheel into a local cache directory that the host cannot see).
BUILD_COMMAND: list[str] = []
INSTALL_COMMAND = ["in-dir={env_dir} python -m pip install {build_dir}"]
RUNNER = "benchmark.py"  # asv's runner script, there beside the suite
SKIP_ENV = {"PATH", "PYTHONPATH", "ASV_PYTHONPATH", "HOME", "PWD", "OLDPWD", "SHLVL", "_"}


class RouterEnvironment(environment.Environment):  # type: ignore[misc]
    """The environment of `"environment_type": "router"`."""
    tool_name = "router"
    matches_python_fallback = False
    _roots: dict[str, str] = {}  # target: the environments' directory there, resolved once
    _shipped: dict[tuple[str, str], str] = {}  # (target, local suite dir): where it is there

    def __init__(self, conf: Any, python: str, requirements: dict[str, str],
                 tagged_env_vars: dict[tuple[str, str], str]) -> None:
        self._router = router_for(conf, target_of(conf, tagged_env_vars))
        self._remote_dir = str(getattr(conf, "router_env_dir", "") or ".cache/router-asv")
        self._benchmark_dir = os.path.abspath(conf.benchmark_dir)
        self._system_site = bool(getattr(conf, "router_system_site_packages", False))
        # asv's own environment is not the host's: only these of its variables go (fnmatch patterns).
        self._pass_env = [str(p) for p in getattr(conf, "router_pass_env", None) or []]
        self._python, self._requirements = python, requirements  # asv's __init__ names the env with them
        super().__init__(conf, python, requirements, tagged_env_vars)
        if conf.build_command is None:
            self._build_command = BUILD_COMMAND
        if conf.install_command is None:
            self._install_command = INSTALL_COMMAND

    @classmethod
    def matches(cls, python: str) -> bool:
        return re.match(r"^[0-9]+(\.[0-9]+)*$", python) is not None

    # -- where things are there --------------------------------------------------------------

    @property
    def root(self) -> str:
        """The directory of the environments on the router's host (made if missing)."""
        target = self._router.target
        if target not in self._roots:
            script = 'case "$1" in /*) d="$1";; *) d="$HOME/$1";; esac; mkdir -p "$d" && cd "$d" && pwd'
            try:
                out = self._router.check(["sh", "-c", script, "sh", self._remote_dir], timeout=60)
            except subprocess.CalledProcessError as e:
                raise util.UserError(f"router {target}: cannot make {self._remote_dir}: "
                                     f"{e.stderr.decode(errors='replace').strip()}") from None
            self._roots[target] = out.decode().strip()
        return self._roots[target]

    @property
    def remote_path(self) -> str:
        return f"{self.root}/{self.dir_name}"

    def _suite_there(self) -> str:
        """Where asv's runner script and the benchmark suite are there: sent once per asv command."""
        key = (self._router.target, self._benchmark_dir)
        if key not in self._shipped:
            tar = tar_of({"suite": self._benchmark_dir, RUNNER: BENCHMARK_RUN_SCRIPT})
            there = f"{self.root}/suites/{hashlib.sha256(tar).hexdigest()[:16]}"
            self._router.send_tree(tar, there, keep=True)
            self._shipped[key] = there
        return self._shipped[key]

    def _map(self, value: str, outputs: dict[str, str]) -> str:
        """A local path in a command as the host sees it: the environment's, the suite's, asv's
        temporary ones; other values as they are."""
        if not os.path.isabs(value):
            return value
        if value == BENCHMARK_RUN_SCRIPT:
            return f"{self._suite_there()}/{RUNNER}"
        for local, there in ((self._benchmark_dir, "suite"), (self._path, ""), (self._env_dir, "..")):
            if value == local or value.startswith(local + os.sep):
                base = f"{self._suite_there()}/suite" if there == "suite" else os.path.normpath(
                    f"{self.remote_path}/{there}")
                return base + value[len(local):]
        if not value.startswith(os.path.join(tempfile.gettempdir(), "")):
            return value  # the host's own path, or a local one it cannot see
        # asv's temporary directories (a benchmark's cwd, setup_cache's) and files (what the
        # command writes: read back after it succeeded), in a scratch directory there
        scratch = f"{self.root}/scratch/{hashlib.md5(value.encode()).hexdigest()}"
        if os.path.isdir(value):
            return scratch
        outputs[value] = f"{scratch}.out"
        return outputs[value]

    # -- asv's interface ---------------------------------------------------------------------

    def check_presence(self) -> bool:
        try:
            info = self.load_info_file(self._path)
        except (util.UserError, OSError):
            return False
        expected = {"tool_name": self.tool_name, "python": self._python, "requirements": self._requirements,
                    "build_env_vars": self.build_env_vars}
        return bool(info == expected and self._router.succeeds([f"{self.remote_path}/bin/python", "-c", "pass"]))

    def _setup(self) -> None:
        os.makedirs(self._path, exist_ok=True)
        log.info(f"Creating virtualenv for {self.name} on {self._router.target}")
        venv = ["python" + self._python, "-m", "venv", *(["--system-site-packages"] if self._system_site else []),
                self.remote_path]
        self._run_there(["sh", "-c", 'rm -rf "$1"', "sh", self.remote_path], timeout=self._install_timeout)
        self._run_there(venv, timeout=self._install_timeout)
        log.info(f"Installing requirements for {self.name}")
        for key, val in {**self._requirements, **self._base_requirements}.items():  # as asv's virtualenv does
            declaration = util.ParsedPipDeclaration(f"{key[4:] if key.startswith('pip+') else key} {val}")
            util.construct_pip_call(self._run_pip, declaration)()

    def _run_pip(self, args: list[str], **kwargs: Any) -> Any:
        return self.run_executable("python", ["-m", "pip", *args], **kwargs)

    def _run_there(self, args: list[str], **kwargs: Any) -> Any:
        return util.check_output(self._router.exec_command(args), **kwargs)

    def checkout_project(self, repo: Any, commit_hash: str) -> None:
        super().checkout_project(repo, commit_hash)
        log.info(f"Sending the checkout to {self._router.target}")
        self._router.send_tree(tar_of(tree(self._build_root)), f"{self.remote_path}/project")

    def find_executable(self, executable: str) -> str:
        return f"{self.remote_path}/bin/{executable}"

    def run(self, args: list[str], **kwargs: Any) -> Any:
        log.debug(f"Running '{' '.join(args)}' in {self.name} on {self._router.target}")
        return self.run_executable("python", args, **kwargs)

    def run_executable(self, executable: str, args: list[str], **kwargs: Any) -> Any:
        """asv's run_executable, on the router's host: the command's environment is what asv adds to
        its own (its ASV_* variables, the matrix's, a command's VAR=value prefixes) and the variables
        `router_pass_env` names, paths mapped."""
        outputs: dict[str, str] = {}
        given = kwargs.pop("env", None) or os.environ
        env = {key: value for key, value in given.items() if key not in SKIP_ENV and (
            os.environ.get(key) != value or any(fnmatch.fnmatchcase(key, p) for p in self._pass_env))}
        env.update(self._global_env_vars, PIP_USER="false")
        env = {key: self._map(value, outputs) for key, value in env.items()}
        command = [self.find_executable(executable), *(self._map(arg, outputs) for arg in args)]
        cwd = self._map(os.path.abspath(kwargs.pop("cwd", None) or self._path), outputs)
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._install_timeout
        marker = f"router-asv-{uuid.uuid4().hex}"
        there = self._router.in_dir(cwd, self.remote_path, command, marker)
        local = [*self._router.proxy(), *(f"--env={key}={value}" for key, value in sorted(env.items())),
                 *(f"--fetch={path}={mine}" for mine, path in outputs.items()), "--", *there]
        try:
            result = util.check_output(local, **kwargs)
        except (KeyboardInterrupt, util.ProcessError) as e:
            if not isinstance(e, util.ProcessError) or e.retcode == util.TIMEOUT_RETCODE:
                self._router.end(marker)
            raise
        if kwargs.get("return_stderr") and result[2] == util.TIMEOUT_RETCODE:
            self._router.end(marker)
        return result


__all__ = ["TARGET_VAR", "RouterEnvironment"]
