"""The errors edgecompress raises on purpose.

A leaf module (imports nothing of the project) so every layer can use it. The CLI turns an
``EdgeCompressError`` into one line on stderr and exit code 1; anything else is a bug and keeps
its traceback under ``--debug``.
"""

from __future__ import annotations


class EdgeCompressError(Exception):
    """A failure the user can act on: the message names the file, argument, node or tensor at fault."""


class BadInputError(EdgeCompressError, ValueError):
    """The user's input (file, argument, tensor, data) is wrong."""


class CheckFailedError(EdgeCompressError):
    """A numerical check (export parity, subnet equality, engine parity, INT8 floor) failed."""


class MissingDependencyError(EdgeCompressError, ImportError):
    """An optional runtime or library that this call needs is not installed or sees no device."""
