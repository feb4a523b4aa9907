"""`pipers run`: apply a user function given as ``module:function``.

The function takes a message and returns a message, a list of messages, or
None to drop it. An exception sends that message to errors/ with the
traceback; the daemon keeps going.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from ..base import Piper
from ..options import daemon_options
from ..runner import start


def load_function(spec: str):
    """``pkg.mod:func`` or ``path/to/file.py:func``."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"--function {spec!r}: expected MODULE:FUNCTION")
    try:
        if module_name.endswith(".py"):
            path = os.path.abspath(module_name)
            mod_spec = importlib.util.spec_from_file_location(
                os.path.splitext(os.path.basename(path))[0], path)
            if mod_spec is None or mod_spec.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, OSError, SyntaxError) as e:
        raise ValueError(f"--function {spec!r}: {e}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"--function {spec!r}: {func_name} is not a callable in {module_name}")
    return func


class Run(Piper):
    name = "run"

    def __init__(self, options, *, function):
        super().__init__(options)
        self.function = load_function(function) if isinstance(function, str) else function

    def process(self, message):
        return self.function(message)


@click.command("run")
@daemon_options()
@click.option("--function", required=True, metavar="MODULE:FUNCTION",
              help="Called with each message; returns message(s) or None to drop.")
def command(**params):
    """Apply a Python function to each message."""
    raise SystemExit(start(lambda o, own: Run(o, **own), params))
