"""Builds router._fastio.

Switches (environment variables, so `pip install -e .` works in every mode):
  ROUTER_DEBUG=1            line tracing, assertions, no optimisation
  ROUTER_CYTHON_ANNOTATE=1  write annotation HTML next to the .pyx
  ROUTER_SANITIZE=1         build with AddressSanitizer
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


debug = _flag("ROUTER_DEBUG")
sanitize = _flag("ROUTER_SANITIZE")

compile_args = ["-O0", "-g3"] if debug else ["-O2"]
link_args = []
macros = []
directives = {"language_level": "3", "boundscheck": False, "wraparound": False}
if debug:
    directives.update(linetrace=True, boundscheck=True, wraparound=True)
    macros += [("CYTHON_TRACE_NOGIL", "1"), ("ROUTER_DEBUG", "1")]
if sanitize:
    compile_args += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    link_args += ["-fsanitize=address"]

extensions = [
    Extension(
        "router._fastio",
        ["src/router/_fastio.pyx"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=macros,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=_flag("ROUTER_CYTHON_ANNOTATE"),
        compile_time_env={"ROUTER_DEBUG": debug},
    )
)
