"""Where per-file jobs run: this machine's process pool (``local``) or a Ray cluster (``ray``).

``protect`` and ``materialize`` build a list of independent jobs (decode, mark, write one file)
and hand them here; results come back in job order whatever the engine, so the writing stage and
its output do not depend on where the work ran. Ray is optional (``pip install tracemark[ray]``):
it lets one issuing run use the cores of several machines, provided every node sees the input and
output paths (a shared filesystem), since each job reads and writes its own files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from tracemark.errors import TracemarkError

ENGINES = ("local", "ray")
#: Progress is reported every this many finished jobs (and at the end).
PROGRESS_EVERY = 16


def check_engine(engine: str) -> None:
    """One-line errors for an unknown engine, or ``ray`` without ray installed, before any work."""
    if engine not in ENGINES:
        raise TracemarkError(f"engine must be one of {', '.join(ENGINES)}, got '{engine}'", params=("engine",))
    if engine == "ray":
        _import_ray()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise TracemarkError("engine ray: ray is not installed (pip install 'tracemark[ray]'), "
                             "or use engine local", params=("engine",)) from None
    return ray


def _die_with_parent() -> None:
    """Pool initializer: a worker gets SIGKILL when its parent dies (Linux), instead of living on
    holding the registry and the caller's pipes."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:  # pragma: no cover - no glibc
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def run_jobs(jobs: Sequence[Any], fn: Callable[[Any], dict], engine: str = "local", workers: int | None = None,
             address: str | None = None, progress: Callable[[int, int], None] | None = None,
             meanwhile: Callable[[], None] | None = None) -> list[dict]:
    """``[fn(job) for job in jobs]``, in job order, on the chosen engine.

    ``fn`` must be a module-level function (it is pickled by reference) that returns errors
    instead of raising them, so one bad file does not abort the batch. ``meanwhile`` runs in this
    process while the jobs run elsewhere (once they are all handed out: no process is started
    after it begins), or after them when they run here; it is called exactly once.
    """
    check_engine(engine)
    if engine == "ray":
        return _run_ray(jobs, fn, workers, address, progress, meanwhile)
    return _run_local(jobs, fn, workers, progress, meanwhile)


def _tick(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress and (done % PROGRESS_EVERY == 0 or done == total):
        progress(done, total)


def _run_local(jobs: Sequence[Any], fn: Callable[[Any], dict], workers: int | None,
               progress: Callable[[int, int], None] | None, meanwhile: Callable[[], None] | None = None) -> list[dict]:
    """A process pool (up to 2 workers by default); small batches run in this process, where a
    pool would cost more to start than the work."""
    from concurrent.futures import ProcessPoolExecutor

    n_workers = workers or min(2, os.cpu_count() or 1)
    total = len(jobs)
    results: list[dict] = []
    if n_workers > 1 and total >= 8:
        with ProcessPoolExecutor(max_workers=n_workers, initializer=_die_with_parent) as pool:
            # map() submits every chunk now, and a fork-context pool starts all its workers at the first
            # submit, so the caller's work below runs beside the workers, never while one is forked
            mapped = pool.map(fn, jobs, chunksize=max(1, total // (8 * n_workers)))
            if meanwhile:
                meanwhile()
            for r in mapped:
                results.append(r)
                _tick(progress, len(results), total)
    else:
        for job in jobs:
            results.append(fn(job))
            _tick(progress, len(results), total)
        if meanwhile:
            meanwhile()
    return results


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, in one line, for a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing
    listens: ``ray.init`` would retry for minutes, logging a warning every few seconds."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():  # "auto", "local", ...: Ray's own resolution
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise TracemarkError(f"address {address}: no Ray cluster answers there "
                             f"({exc.strerror or exc.__class__.__name__})", params=("address",)) from None


def _run_chunk(fn: Callable[[Any], dict], chunk: Sequence[Any]) -> list[dict]:
    """One Ray task: a chunk of jobs (per-file tasks would cost more in scheduling than in work)."""
    return [fn(job) for job in chunk]


def _run_ray(jobs: Sequence[Any], fn: Callable[[Any], dict], workers: int | None, address: str | None,
             progress: Callable[[int, int], None] | None, meanwhile: Callable[[], None] | None = None) -> list[dict]:
    """Chunks of jobs as Ray tasks, gathered in order. Connects to ``address`` (a running cluster)
    or starts a local one with ``workers`` CPUs; an already initialised Ray is used as it is."""
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if address:
            _probe(address)
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = workers or min(2, os.cpu_count() or 1)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise TracemarkError(f"engine ray: cannot start or reach {where} "
                                 f"({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})",
                                 params=("engine",)) from None
        started = True
    try:
        n_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = max(1, len(jobs) // (4 * n_cpus)) if len(jobs) >= 8 else max(1, len(jobs))
        chunks = [list(jobs[i:i + size]) for i in range(0, len(jobs), size)]
        task = ray.remote(num_cpus=1, max_retries=0)(_run_chunk)
        refs = [task.remote(fn, chunk) for chunk in chunks]
        sizes = {ref: len(chunk) for ref, chunk in zip(refs, chunks)}
        pending, done = list(refs), 0
        try:
            if meanwhile:
                meanwhile()
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    done += sizes[ref]
                    if progress:
                        progress(done, len(jobs))
            results: list[dict] = []
            for part in ray.get(refs):
                results.extend(part)
            return results
        except BaseException as exc:
            for ref in pending:
                ray.cancel(ref, force=True)
            if isinstance(exc, ray.exceptions.RayError):  # a worker died, or could not import tracemark
                raise TracemarkError(f"engine ray: a task failed ({str(exc).strip().splitlines()[-1]})",
                                     params=("engine",)) from None
            raise
    finally:
        if started:
            ray.shutdown()
