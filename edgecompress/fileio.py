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
        final = self.root / name
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))
        report: dict = {}
        try:
            yield tmp, report
            write_json_atomic(tmp / "stage.json", report)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
