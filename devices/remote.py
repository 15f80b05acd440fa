"""Remote boards over TVM's RPC: a board's server (``--remote HOST:PORT``) or a farm behind a tracker
(``--tracker HOST:PORT --key KEY``).

The library to run is compiled elsewhere (``edgecompress.runtime.backend_tvm.compile_tvm`` followed by
``TvmBuild.export``, cross-compiled for the board's target); this module only moves it and times it, so
``devices/`` stays free of the compile stack. On the board: ``session.upload(lib)``,
``session.load_module(name)``, a Relax ``VirtualMachine`` on ``session.cpu()`` and
``vm.time_evaluator("main", dev, number, repeat)``, which times on the board and excludes the network.

Every network step runs under ``timeout_s``: an unreachable address, a tracker with no server under
the key (the tracker would otherwise queue the request forever), or a server that stops answering
raises ``RemoteError`` naming the address, key and timeout. ``serve_tracker``/``serve_board`` start
TVM's own tracker and server for tests and small farms; both bind to 127.0.0.1 unless a host is
given.

>>> target = RemoteTarget.parse(tracker="127.0.0.1:9190", key="rpi4")
>>> target.describe()
'tracker 127.0.0.1:9190 key rpi4'
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgecompress.errors import BadInputError, EdgeCompressError, MissingDependencyError

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


class RemoteError(EdgeCompressError):
    """The board or tracker could not be reached or did not answer in time."""


def parse_address(text: str, what: str = "--remote") -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ``BadInputError`` naming ``what`` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInputError(f"{what} {text!r}: expected HOST:PORT with a port in 1..65535")
    return host, int(port)


@dataclass(frozen=True)
class RemoteTarget:
    """Where to run: a direct server (``key`` None) or a tracker and key; ``timeout_s`` bounds every step."""

    host: str
    port: int
    key: str | None = None
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s={self.timeout_s}: must be > 0")
        if self.key == "":
            raise ValueError("key: must not be empty")

    @classmethod
    def parse(cls, remote: str | None = None, tracker: str | None = None, key: str | None = None,
              timeout_s: float = 60.0) -> RemoteTarget:
        if (remote is None) == (tracker is None):
            raise BadInputError("give either --remote HOST:PORT or --tracker HOST:PORT --key KEY")
        if tracker is not None:
            if not key:
                raise BadInputError("--tracker needs --key (the key the boards registered under)")
            return cls(*parse_address(tracker, "--tracker"), key=key, timeout_s=timeout_s)
        if key:
            raise BadInputError("--key goes with --tracker, not --remote")
        return cls(*parse_address(remote, "--remote"), timeout_s=timeout_s)

    def describe(self) -> str:
        if self.key is None:
            return f"server {self.host}:{self.port}"
        return f"tracker {self.host}:{self.port} key {self.key}"


def _rpc():
    from edgecompress.runtime.tvm_targets import default_thread_pool_env

    default_thread_pool_env()  # a server started here runs kernels in a child that inherits it
    try:
        from tvm import rpc
    except ImportError as exc:
        raise MissingDependencyError("TVM RPC needs apache-tvm: pip install 'edgecompress[tvm]'") from exc
    return rpc


def _within(seconds: float, what: str, fn: Callable[[], T]) -> T:
    """``fn()`` or ``RemoteError`` after ``seconds`` (the call is left to finish on a daemon thread)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    try:
        return future.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise RemoteError(f"{what}: no answer within {seconds:g} s") from None
    except (ConnectionError, OSError) as exc:
        raise RemoteError(f"{what}: {exc}") from None
    except Exception as exc:  # tvm.error.TVMError / RPCError carry the server's message
        raise RemoteError(f"{what}: {str(exc).strip().splitlines()[-1]}") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def connect(target: RemoteTarget):
    """An RPC session on the board (``tvm.rpc.RPCSession``); ``RemoteError`` within ``target.timeout_s``."""
    rpc = _rpc()
    where = target.describe()
    if target.key is None:
        return _within(target.timeout_s, f"cannot connect to {where}",
                       lambda: rpc.connect(target.host, target.port, session_timeout=int(target.timeout_s) + 1))
    tracker = _within(target.timeout_s, f"cannot connect to {where}",
                      lambda: rpc.connect_tracker(target.host, target.port))
    summary = _within(target.timeout_s, f"{where}: tracker summary", tracker.summary)
    keys = sorted(summary.get("queue_info", {}))
    if target.key not in keys:
        raise RemoteError(f"{where}: no board is registered under key {target.key!r} "
                          f"(keys on this tracker: {', '.join(keys) or 'none'})")
    return _within(target.timeout_s, f"{where}: no free board",
                   lambda: tracker.request(target.key, priority=0, session_timeout=int(target.timeout_s) + 1,
                                           max_retry=1))


def time_library(target: RemoteTarget, library: str | Path, feeds: Sequence[np.ndarray] | Mapping[str, np.ndarray],
                 *, repeats: int = 50, number: int = 1, warmup: int = 5) -> dict[str, Any]:
    """Upload ``library`` (a Relax executable exported as ``.so``), time ``main`` on the board, fetch results.

    ``feeds`` are the inputs in the model's input order. Returns per-repeat milliseconds (each the mean
    of ``number`` runs) as timed on the board by ``time_evaluator`` and the session's timings.
    """
    import tvm
    from tvm import relax

    path = Path(library)
    if not path.is_file():
        raise BadInputError(f"{path}: no such library (compile it for the board first)")
    if repeats < 1 or number < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, number={number}, warmup={warmup}: need >= 1, >= 1, >= 0")
    arrays = list(feeds.values()) if isinstance(feeds, Mapping) else list(feeds)
    where = target.describe()
    t0 = time.perf_counter()
    session = connect(target)
    t_connect = time.perf_counter() - t0
    limit = target.timeout_s

    def run() -> tuple[list[float], list[np.ndarray], float]:
        t1 = time.perf_counter()
        session.upload(str(path))
        module = session.load_module(path.name)
        dev = session.cpu()
        vm = relax.VirtualMachine(module, dev)
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
        t_upload = time.perf_counter() - t1
        for _ in range(warmup):
            vm["main"](*args)
        result = vm.time_evaluator("main", dev, number=number, repeat=repeats)(*args)
        out = vm["main"](*args)
        outs = [out] if hasattr(out, "numpy") else list(out)
        return [float(s) * 1e3 for s in result.results], [o.numpy() for o in outs], t_upload

    samples, outputs, t_upload = _within(limit, f"{where}: timing {path.name}", run)
    return {"samples_ms": samples, "outputs": outputs, "remote": where, "number": number, "repeats": repeats,
            "warmup": warmup, "connect_s": t_connect, "upload_s": t_upload, "timer": "tvm time_evaluator on the board"}


@dataclass
class LocalService:
    """A TVM tracker or server started here; ``close()`` ends it."""

    kind: str
    host: str
    port: int
    handle: Any

    def close(self) -> None:
        self.handle.terminate()

    def __enter__(self) -> LocalService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_tracker(host: str = LOOPBACK, port: int = 9190, port_end: int = 9290) -> LocalService:
    """TVM's tracker (``tvm.rpc.tracker.Tracker``, needs tornado) on the first free port in range."""
    _rpc()
    try:
        from tvm.rpc.tracker import Tracker
    except ImportError as exc:
        raise MissingDependencyError(f"the TVM tracker needs tornado: pip install tornado ({exc})") from exc
    t = Tracker(host=host, port=port, port_end=port_end, silent=True)
    return LocalService("tracker", host, t.port, t)


def serve_board(key: str | None = None, tracker: tuple[str, int] | None = None, host: str = LOOPBACK,
                port: int = 9300, port_end: int = 9400, wait_s: float = 10.0) -> LocalService:
    """TVM's RPC server (a board); registered with ``tracker`` under ``key`` when given."""
    _rpc()
    from tvm.rpc.server import Server

    if (key is None) != (tracker is None):
        raise BadInputError("serve_board: give both key and tracker, or neither")
    s = Server(host=host, port=port, port_end=port_end, tracker_addr=tracker, key=key or "", silent=True)
    service = LocalService("server", host, s.port, s)
    if tracker is not None:  # wait until the tracker lists the key
        rpc = _rpc()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if key in rpc.connect_tracker(*tracker).summary().get("queue_info", {}):
                return service
            time.sleep(0.1)
        service.close()
        raise RemoteError(f"server did not register under key {key!r} with tracker {tracker} in {wait_s:g} s")
    return service
