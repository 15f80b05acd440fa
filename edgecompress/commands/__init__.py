"""CLI subcommands: one module each, registered in ``COMMANDS``.

A subcommand only parses arguments, builds a config, calls one documented API function and prints;
it never holds logic of its own. ``run(args)`` returns ``(data, text)``: ``data`` is printed as JSON
under ``--json``, ``text`` otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgecompress.registry import Registry


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], tuple[Any, str]]


COMMANDS: Registry[Command] = Registry("command")


def discover() -> list[Command]:
    """Import every module in this package once; each registers its command(s)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return [COMMANDS.get(n) for n in COMMANDS.names()]
