"""Deployable bundles: a directory (optionally a ``.tar.gz``) that runs with only its runtime installed.

Layout::

    BUNDLE/
      manifest.json   schema_version, runtime + version, device + target, inputs/outputs (shapes, dtypes),
                      preprocessing, sha256 of model.onnx and of every file, the reports that produced it
      model.onnx      the source model
      <engine file>   runtime-specific: TVM ``engine.so``, TensorRT ``engine.plan``, none for onnxruntime

Each runtime describes its bundle part in a ``BundleFormat`` registered in ``BUNDLE_FORMATS`` by its
backend file (``backend_tvm.py``, ``backend_tensorrt.py``; onnxruntime's is below). ``load_bundle``
checks the manifest (present, this schema version) and every file's hash before loading anything, and
imports neither torch nor the compression stack.

Archives are unpacked with checks written here (Python's tarfile ``data`` filter is applied as well
where it exists): regular files and directories only, no absolute names, no ``..``, nothing that
resolves outside the destination.

>>> path = compile_bundle("model.onnx", "tvm", "rpi4", "bundle")   # doctest: +SKIP
>>> engine = load_bundle("bundle")                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgecompress.errors import BadInputError
from edgecompress.fileio import atomic_dir, atomic_path, sha256_file, write_json_atomic
from edgecompress.registry import Registry
from edgecompress.runtime.engine import Engine, EngineOptions, TensorSpec, discover_backends

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"


@dataclass(frozen=True)
class BuildRequest:
    """What a runtime needs to write its part of a bundle into ``out_dir``."""

    onnx_path: Path
    device: str
    out_dir: Path
    threads: int | None = None
    tune_trials: int = 0
    precision: str = "fp32"
    cross_parity: bool = True


@dataclass(frozen=True)
class BuiltPart:
    """What a runtime wrote: the engine file (or None), specs, target and its report."""

    engine_file: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    target: Any
    version: str
    report: Mapping[str, Any]


@dataclass(frozen=True)
class BundleFormat:
    """A runtime's bundle part: ``build(request) -> BuiltPart``; ``load(dir, manifest, threads) -> Engine``."""

    build: Callable[[BuildRequest], BuiltPart]
    load: Callable[[Path, Mapping[str, Any], int | None], Engine]


BUNDLE_FORMATS: Registry[BundleFormat] = Registry("bundle runtime")


def compile_bundle(onnx_path: str | Path, runtime: str, device: str, out_dir: str | Path,
                   stage_reports: Mapping[str, Any] | None = None, archive: bool = False, *,
                   threads: int | None = None, tune_trials: int = 0, precision: str = "fp32",
                   preprocessing: Mapping[str, Any] | None = None, cross_parity: bool = True) -> Path:
    """Compile ``onnx_path`` for ``runtime`` on ``device`` into the bundle directory ``out_dir``.

    Returns the directory, or the ``out_dir.tar.gz`` archive when ``archive`` (the directory stays).
    The directory is written through a temporary sibling and renamed, so it is whole or absent; an
    existing ``out_dir`` is replaced only if it is itself a bundle (has a manifest). ``cross_parity``:
    for a target this machine cannot run, also compile the model for the host and check that build
    against onnxruntime (the cross-compiled code itself cannot be run here).
    """
    discover_backends()
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise BadInputError(f"{onnx_path}: no such ONNX file")
    fmt = BUNDLE_FORMATS.get(runtime)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file())):
        raise BadInputError(f"{out_dir}: exists and is not a bundle; refusing to overwrite it")
    with atomic_dir(out_dir) as tmp:
        shutil.copyfile(onnx_path, tmp / MODEL)
        start = time.perf_counter()
        part = fmt.build(BuildRequest(tmp / MODEL, device, tmp, threads, tune_trials, precision, cross_parity))
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created_by": f"edgecompress {_version()}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runtime": {"name": runtime, "version": part.version},
            "device": device,
            "target": part.target,
            "inputs": [s.as_dict() for s in part.inputs],
            "outputs": [s.as_dict() for s in part.outputs],
            "preprocessing": dict(preprocessing) if preprocessing is not None else None,
            "model": {"file": MODEL, "sha256": sha256_file(tmp / MODEL), "source": str(onnx_path)},
            "engine": {"file": part.engine_file},
            "files": {name: sha256_file(tmp / name) for name in files},
            "compile": {**dict(part.report), "seconds": round(time.perf_counter() - start, 2)},
            "stage_reports": dict(stage_reports or {}),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    if archive:
        return write_archive(out_dir)
    return out_dir


def write_archive(bundle_dir: str | Path) -> Path:
    """``<bundle_dir>.tar.gz`` with the bundle's files under one top folder, written atomically."""
    bundle_dir = Path(bundle_dir)
    target = bundle_dir.with_name(bundle_dir.name + ".tar.gz")
    with atomic_path(target) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(bundle_dir.iterdir()):
            tar.add(p, arcname=f"{bundle_dir.name}/{p.name}", recursive=False)
    return target


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """The manifest of a bundle directory after checking its schema version and every file's hash."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BadInputError(f"{bundle_dir}: not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise BadInputError(f"{path}: schema_version {version!r}; this edgecompress reads version {SCHEMA_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict) or MODEL not in files:
        raise BadInputError(f"{path}: the manifest lists no files (or not {MODEL})")
    engine_file = (manifest.get("engine") or {}).get("file")
    if engine_file is not None and engine_file not in files:
        raise BadInputError(f"{path}: engine file {engine_file!r} has no hash in the manifest")
    for name, digest in files.items():
        if not _plain_name(name):
            raise BadInputError(f"{path}: file name {name!r} is not a plain file name")
        f = bundle_dir / name
        if not f.is_file() or f.is_symlink():
            raise BadInputError(f"{bundle_dir}: {name} is missing")
        if sha256_file(f) != digest:
            raise BadInputError(f"{bundle_dir}: {name} does not match its sha256 in the manifest (modified?)")
    if manifest.get("model", {}).get("sha256") != files[MODEL]:
        raise BadInputError(f"{path}: model.sha256 disagrees with files[{MODEL!r}]")
    return manifest


def load_bundle(path: str | Path, threads: int | None = None) -> Engine:
    """An Engine for a bundle directory or ``.tar.gz``; checks the manifest and every hash first.

    Imports only the bundle's runtime (never torch). A ``.tar.gz`` is unpacked with path checks into
    a temporary directory that lives as long as the engine.
    """
    path = Path(path)
    tmp = None
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        tmp = tempfile.TemporaryDirectory(prefix="edgecompress-bundle-")
        bundle_dir = _single_root(safe_extract(path, Path(tmp.name)))
    elif path.is_dir():
        bundle_dir = path
    elif not path.exists():
        raise BadInputError(f"{path}: no such bundle")
    else:
        raise BadInputError(f"{path}: not a bundle (expected a directory with {MANIFEST} or a .tar.gz of one)")
    manifest = read_manifest(bundle_dir)
    discover_backends()
    runtime = manifest["runtime"]["name"]
    engine = BUNDLE_FORMATS.get(runtime).load(bundle_dir, manifest, threads)
    engine.bundle_manifest = manifest
    if tmp is not None:
        engine._bundle_tmp = tmp  # removed with the engine
    return engine


def _plain_name(name: str) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _single_root(dest: Path) -> Path:
    if (dest / MANIFEST).is_file():
        return dest
    entries = [p for p in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    raise BadInputError(f"archive holds no {MANIFEST} at its top level or in a single top folder")


def check_member(member: tarfile.TarInfo, dest: Path) -> None:
    """Refuse absolute names, ``..``, links, devices and anything resolving outside ``dest``."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or os.path.isabs(name):
        raise BadInputError(f"archive member {name!r}: absolute path refused")
    if ".." in parts or any(".." in p.split("\\") for p in parts):
        raise BadInputError(f"archive member {name!r}: '..' in the path refused")
    if member.issym() or member.islnk():
        raise BadInputError(f"archive member {name!r}: links are refused (points to {member.linkname!r})")
    if not (member.isfile() or member.isdir()):
        raise BadInputError(f"archive member {name!r}: only regular files and directories are allowed")
    root = dest.resolve()
    resolved = (root / name).resolve()
    if resolved != root and root not in resolved.parents:
        raise BadInputError(f"archive member {name!r}: resolves outside the destination")


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Unpack ``archive`` into ``dest`` after checking every member (see ``check_member``)."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                check_member(m, dest)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python without PEP 706: our checks above are the only guard
                tar.extractall(dest, members=members)  # noqa: S202 - members checked above
    except tarfile.TarError as exc:
        raise BadInputError(f"{archive}: not a readable tar archive ({exc})") from None
    return dest


def _version() -> str:
    from edgecompress import __version__

    return __version__


# -- onnxruntime: the ONNX file is the engine --------------------------------------------------------

def _ort_build(req: BuildRequest) -> BuiltPart:
    from edgecompress.runtime.backend_onnxruntime import OrtEngine
    from edgecompress.runtime.engine import RUNTIMES

    engine = RUNTIMES.get("onnxruntime")(req.onnx_path, EngineOptions(threads=req.threads))
    assert isinstance(engine, OrtEngine)
    settings = engine.settings()
    return BuiltPart(None, engine.inputs, engine.outputs,
                     {"providers": settings["providers"], "device": req.device}, settings["version"],
                     {"engine": settings, "note": "onnxruntime runs model.onnx as is; no engine file"})


def _ort_load(bundle_dir: Path, manifest: Mapping[str, Any], threads: int | None) -> Engine:
    from edgecompress.runtime.engine import RUNTIMES

    providers = tuple((manifest.get("target") or {}).get("providers") or ("CPUExecutionProvider",))
    return RUNTIMES.get("onnxruntime")(bundle_dir / MODEL, EngineOptions(threads=threads, providers=providers))


BUNDLE_FORMATS.add("onnxruntime", BundleFormat(_ort_build, _ort_load))
