"""Files written whole or not at all: atomic JSON, stage directories, hashes. A leaf module."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _default_mode(directory: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give (0o666 / 0o777 less the umask); mkstemp gives 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; it becomes ``path`` only if the block succeeds.

    On success the file gets the permissions a normal write would give and is renamed over ``path``;
    on any error it is removed, so a failed write leaves nothing behind.

    >>> with atomic_path("out/model.onnx", ".onnx.tmp") as tmp:   # doctest: +SKIP
    ...     write_somehow(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds.

    On success the directory gets the permissions a normal ``mkdir`` would give (mkdtemp gives 0700),
    an older ``path`` is removed and the new one renamed into place; on any error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON to ``path`` through a temporary file and a rename: never half-written."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class RunDir:
    """A run directory with one sub-directory per stage, each written atomically.

    ``with run.stage("export") as d:`` yields a temporary directory; when the block ends without an
    error it becomes ``run/export`` with ``stage.json`` (the stage's report). A stage that already
    finished is skipped by callers that check ``run.done(name)``, so an interrupted run resumes.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str) -> bool:
        return (self.root / name / "stage.json").is_file()

    def report(self, name: str) -> dict:
        return json.loads((self.root / name / "stage.json").read_text())

    @contextmanager
    def stage(self, name: str) -> Iterator[tuple[Path, dict]]:
        """Yields ``(tmp_dir, report)``; fill the report dict, it is saved as ``stage.json``."""
        report: dict = {}
        with atomic_dir(self.root / name) as tmp:
            yield tmp, report
            write_json_atomic(tmp / "stage.json", report)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
