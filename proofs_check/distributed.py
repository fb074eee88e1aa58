"""Sweeps on a Dask cluster: `gapcheck evaluate SPEC... --workers N | --scheduler ADDRESS` and
`gapcheck verify --workers N | --scheduler ADDRESS` (docs/distributed.md).

The work is cut into independent tasks — for evaluate the numbers of one run of whole point
chunks of a spec (the chunks :func:`proofs_check.evaluation.evaluate_spec` evaluates together,
so every batch, and with it every number, is the serial run's) and the symbolic predictions of
a run of points; for verify one claim, or one group of claims that share cached sweeps.  A task
is plain data (the spec's TOML text or dict, the point range, the options; claim ids, mode,
seed, device) and names a function of this module, never user code; its answer is plain data
or gapcheck's own result records (:class:`numerics.sweep.PointResult`, the report entry of a
claim).  The answers are put back
in the serial order, so the table, JSON and JSON Lines output are those of the serial run,
bit for bit on CPU (with the same torch and gapcheck on every worker).

``Cluster(workers=N)`` starts a local cluster of N single-threaded worker processes (torch at
``GAPCHECK_THREADS`` threads, default one, in each); ``Cluster(scheduler=ADDRESS)`` connects to
a cluster the user started (``dask scheduler``, ``dask worker ADDRESS --nthreads 1``).  Dask is
an optional dependency (``pip install 'gapcheck[dask]'``), imported only here and only when a
cluster is asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import math
import os
import sys
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .runtime import UserError, default_threads, gapcheck_version, torch_threads

__all__ = ["Cluster", "ClientStart", "ClusterError", "SpecSource", "SpecSweep", "plan_points", "plan_predictions", "set_predictions", "run_claims",
           "claim_tasks", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'gapcheck[dask]'"

#: Seconds to wait for the scheduler to answer and for a first worker to join it.
CONNECT_TIMEOUT = 30.0

#: The glibc variable a Dask nanny sets in its worker (``distributed.nanny.pre-spawn-environ``,
#: 64 KiB): it turns off glibc's adaptive mmap threshold, so every large torch tensor is a fresh
#: mmap, zeroed by the kernel; verify's C17 then runs 2-3x slower (sys time 3 s -> 30 s).  Local
#: clusters start without it; workers of an existing cluster are checked (docs/distributed.md).
SLOW_MALLOC = "MALLOC_TRIM_THRESHOLD_"


class ClusterError(UserError):
    """The cluster could not run the work (Dask missing, no scheduler at the address, no
    workers, a worker died or cannot import gapcheck): one line, exit status 2."""


@dataclass(frozen=True)
class Cluster:
    """Where tasks run: ``workers`` local worker processes, or the Dask scheduler at ``scheduler``
    (e.g. ``tcp://10.0.0.5:8786``).  Exactly one of the two."""

    workers: int | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if (self.workers is None) == (self.scheduler is None):
            raise UserError("give either --workers N or --scheduler ADDRESS")
        if self.workers is not None and (not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1):
            raise UserError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.scheduler is not None and (not isinstance(self.scheduler, str) or not self.scheduler.strip()):
            raise UserError("--scheduler needs an address, e.g. tcp://127.0.0.1:8786")

    @classmethod
    def from_options(cls, workers: int | None, scheduler: str | None) -> Cluster | None:
        """``None`` (serial) when neither option is given."""
        if workers is None and scheduler is None:
            return None
        return cls(workers, scheduler)


def _import_distributed() -> Any:
    try:
        return importlib.import_module("distributed")
    except ImportError:
        raise ClusterError(f"--workers and --scheduler need Dask, which is not installed: {INSTALL_HINT}") from None


@contextlib.contextmanager
def open_client(cluster: Cluster, stop_forkserver: bool = True) -> Iterator[Any]:
    """A ``distributed.Client`` on ``cluster``; a local cluster is shut down (its worker
    processes ended) on leaving, also on an error or Ctrl-C.  The forkserver its workers were
    forked from (:func:`_start_method`) is stopped too, unless ``stop_forkserver`` is false (the
    CLI, whose process ends right after: the server then ends with it, and the ~0.5 s of its
    teardown is not waited for)."""
    dist = _import_distributed()
    local = None
    client = None
    method = None
    try:
        if cluster.workers:
            # processes, one thread each (a task sets torch's threads itself); no dashboard, and the
            # scheduler's HTTP server on a free port of this host only (no clash); no memory limit
            # (the nanny would kill a worker the serial run lets live); without Dask's
            # MALLOC_TRIM_THRESHOLD_ (see SLOW_MALLOC)
            import dask

            method = _start_method()
            saved = dict(os.environ)
            try:
                with dask.config.set({f"distributed.nanny.pre-spawn-environ.{SLOW_MALLOC}": None,
                                      "distributed.worker.multiprocessing-method": method, **QUIET_LOCAL_CLUSTER}):
                    if method == "forkserver":
                        _set_forkserver_preload()
                    local = dist.LocalCluster(n_workers=cluster.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                              dashboard_address=None, silence_logs=logging.ERROR, memory_limit=0,
                                              scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
            except Exception as exc:  # noqa: BLE001 (Dask raises RuntimeError, OSError, TimeoutError, ...)
                raise ClusterError(f"could not start a local Dask cluster of {cluster.workers} workers "
                                   f"({type(exc).__name__}: {exc}); a Python script that asks for workers must call "
                                   "gapcheck under `if __name__ == '__main__':` (the workers are new processes that "
                                   "import the script)") from None
            finally:  # the nanny sets its worker's variables (OMP_NUM_THREADS, ...) in this process too
                for k in set(os.environ) - set(saved):
                    del os.environ[k]
                os.environ.update(saved)
            client = dist.Client(local)
        else:
            try:
                client = dist.Client(cluster.scheduler, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as exc:
                raise ClusterError(f"cannot reach the Dask scheduler at {cluster.scheduler}: {exc}; "
                                   "start one with `dask scheduler` and workers with `dask worker ADDRESS --nthreads 1`") from None
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                raise ClusterError(f"no Dask worker joined the scheduler at {cluster.scheduler} within "
                                   f"{CONNECT_TIMEOUT:.0f} s ({type(exc).__name__}); start some with "
                                   f"`dask worker {cluster.scheduler} --nthreads 1`") from None
        yield client
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if local is not None:
            with contextlib.suppress(Exception):
                local.close()
        if method == "forkserver" and stop_forkserver:  # no idle process (torch and sympy loaded) left behind
            import multiprocessing.forkserver as mp_forkserver

            with contextlib.suppress(Exception):
                mp_forkserver._forkserver._stop()


#: Dask settings of a local cluster that take CPU from the computation for features a
#: gapcheck sweep does not use: stack sampling every 10 ms (the dashboard's profiler), the
#: event-loop blocking monitor every 20 ms, psutil system monitoring every 0.5 s, work-stealing
#: checks every 0.1 s (the tasks are few and long; a free worker still takes the next one).
#: Measured: the client process used 3.1 s of CPU during an 8-spec sweep with Dask's defaults,
#: 2.1 s with these (docs/performance.md).
QUIET_LOCAL_CLUSTER: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "10s",
    "distributed.scheduler.work-stealing-interval": "1s",
}

#: What the forkserver of a local cluster imports once, before it forks the workers: Dask, and
#: proofs_check._worker_warmup (the numeric stack, warmed by one small CPU evaluation).
FORKSERVER_PRELOAD: tuple[str, ...] = ("distributed", "proofs_check._worker_warmup")


def _start_method() -> str:
    """How a local cluster starts its worker processes: ``forkserver`` where the platform has it
    (Linux, macOS), else ``spawn``; ``GAPCHECK_DASK_START=spawn`` forces spawn.

    With the forkserver the imports and first-call costs are paid once for all workers, in a
    server started before them, and a worker ends with ``os._exit`` when its cluster closes,
    without a full interpreter teardown (spawned workers import torch and sympy each, ~2 s of
    CPU apiece, and take ~0.4 s each to tear them down again; docs/distributed.md)."""
    import multiprocessing

    wanted = os.environ.get("GAPCHECK_DASK_START", "forkserver")
    if wanted not in ("forkserver", "spawn"):
        raise UserError(f"GAPCHECK_DASK_START must be forkserver or spawn, got {wanted!r}")
    return wanted if wanted in multiprocessing.get_all_start_methods() else "spawn"


def _set_forkserver_preload() -> None:
    """Make the forkserver import :data:`FORKSERVER_PRELOAD` (effective when it first starts;
    it then serves every later local cluster of this process).  Dask sets its own preload list
    on its first use of the forkserver, so that comes first and ours replaces it."""
    from distributed.utils import get_mp_context

    ctx = get_mp_context()
    ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    # torch in the forkserver must not query CUDA through the CUDA runtime (a forked child could
    # not use CUDA then); the NVML-based check is fork-safe.  The warm-up is CPU-only anyway.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")


class ClientStart:
    """:func:`open_client` entered in a background thread: the cluster starts (worker processes
    spawned, the forkserver importing and warming the numeric stack) while this process goes on
    with its own start-up (importing torch and sympy, parsing the specs).  ``get()`` waits for
    the client (raising the start's error, e.g. a :class:`ClusterError`); ``close()`` waits for
    the start and shuts the cluster down.  `gapcheck evaluate` and `gapcheck verify` start their
    cluster this way right after reading their arguments."""

    def __init__(self, cluster: Cluster, stop_forkserver: bool = True) -> None:
        self.cluster = cluster
        self._cm = open_client(cluster, stop_forkserver)
        self._client: Any = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._start, name="gapcheck-cluster-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self._client = self._cm.__enter__()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller by get())
            self._error = exc

    def get(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._client

    def close(self) -> None:
        self._thread.join()
        if self._client is not None and not self._closed:
            self._closed = True
            self._cm.__exit__(None, None, None)

    def __enter__(self) -> ClientStart:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def _client_of(cluster: Cluster | ClientStart) -> Iterator[Any]:
    """The client of a cluster started here (closed on leaving) or of a :class:`ClientStart`
    (left open: its owner closes it)."""
    if isinstance(cluster, ClientStart):
        yield cluster.get()
    else:
        with open_client(cluster) as client:
            yield client


def _n_workers(client: Any) -> int:
    try:
        return max(1, len(client.scheduler_info().get("workers", {})))
    except Exception:  # noqa: BLE001 (an estimate for the task sizes only)
        return 1


# ----------------------------------------------------------------------------------------
# Worker side: plain data in, plain data (or gapcheck's own records) out
# ----------------------------------------------------------------------------------------

#: Tasks in one worker process run one at a time (torch's thread count, hypothesis and the
#: claims' cache are process-wide), also on a worker started with several threads.
_TASK_LOCK = threading.Lock()

#: Exceptions a task may raise that the CLI reports like the serial run (same class, message).
_KNOWN_ERRORS = {
    "theory.spec.SpecError", "numerics.models.ModelError", "numerics.jacobian.SingularJacobianError",
    "numerics.optimize.ConvergenceError", "proofs_check.runtime.UserError", "builtins.FloatingPointError",
    "builtins.ValueError", "builtins.RuntimeError", "builtins.MemoryError",
}


class WorkerError(Exception):
    """An exception raised in a worker that is none of gapcheck's own error types; its class
    name is the original one, so messages read as in the serial run."""


def _error_record(exc: BaseException) -> dict[str, str]:
    return {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc))}


def _reraise(err: Mapping[str, str]) -> None:
    """Raise a worker's exception in this process: gapcheck's own error types (and a few
    builtins) as themselves, anything else as a :class:`WorkerError` of the same name."""
    name = err["type"]
    cls: type[BaseException] | None = None
    if name in _KNOWN_ERRORS:
        module, _, qual = name.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            cls = getattr(importlib.import_module(module), qual)
    if cls is None:
        cls = type(name.rpartition(".")[2] or "WorkerError", (WorkerError,), {})
    exc = cls(err["message"])
    if err.get("traceback") and hasattr(exc, "add_note"):  # shown with the traceback (GAPCHECK_DEBUG=1)
        exc.add_note(f"raised in a Dask worker:\n{err['traceback']}")
    raise exc


def _worker_info() -> dict[str, str]:
    import platform

    import torch

    return {"host": platform.node(), "torch": torch.__version__, "gapcheck": gapcheck_version(),
            "malloc_trim": os.environ.get(SLOW_MALLOC, "")}


@dataclass(frozen=True)
class SpecSource:
    """A spec as plain data for a worker: its TOML ``text`` (or the equivalent ``data`` dict),
    the ``name`` a nameless spec gets (the file's stem) and its ``source`` (the file, as
    error messages name it)."""

    text: str | None = None
    data: Mapping[str, Any] | None = None
    name: str = "model"
    source: str = ""

    @classmethod
    def from_path(cls, path: str | Path) -> SpecSource:
        """The spec file as theory.spec.load_spec reads it (same size limit, name and label)."""
        from theory.spec import SpecError, read_spec_text

        path = Path(path)
        if path.exists() and not path.is_file():
            shown = str(path) if str(path).isprintable() else ascii(str(path))
            raise SpecError(f"{shown}: not a regular file; with --workers or --scheduler each spec file is read again "
                            "to send its text to the workers, so a pipe cannot be used")
        text, shown = read_spec_text(path)
        return cls(text=text, name=path.stem, source=shown)

    def load(self) -> Any:
        """The parsed :class:`theory.spec.SymbolicModel` (in a worker)."""
        from theory.spec import loads_spec, model_from_dict

        sym = model_from_dict(self.data, default_name=self.name) if self.data is not None else loads_spec(self.text or "", name=self.name)
        if self.source:
            sym = dataclasses.replace(sym, meta={**sym.meta, "source": self.source})
        return sym


#: The spec a worker process parsed last, keyed by its plain data: the tasks of one spec (a
#: spec with 10^6 generated points is cut into thousands) parse and check it once per worker,
#: not once per task (~1 s each at that size).
_LAST_SPEC: dict[str, Any] = {}


def _spec_part(task: Mapping[str, Any]) -> Any:
    """The task's spec (:meth:`SpecSource.load`, cached per worker) restricted to its points
    ``start:stop``."""
    import json

    key = json.dumps(task["spec"], sort_keys=True)
    if _LAST_SPEC.get("key") != key:
        _LAST_SPEC.clear()
        _LAST_SPEC.update(key=key, sym=SpecSource(**task["spec"]).load())
    sym = _LAST_SPEC["sym"]
    return dataclasses.replace(sym, points=tuple(sym.points[task["start"]:task["stop"]]))


def _evaluate_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate points ``start:stop`` of a spec (a run of whole chunks) in a worker."""
    with _TASK_LOCK:
        try:
            from .evaluation import evaluate_spec

            part = _spec_part(task)
            with torch_threads(task["threads"]):
                ev = evaluate_spec(part, **task["options"])
            return {"results": ev.results, "seconds": ev.seconds, "device": ev.device, "worker": _worker_info()}
        except Exception as exc:  # reported in the client as in the serial run
            return {"error": _error_record(exc)}


def _predict_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """The symbolic predictions at points ``start:stop`` of a spec, in a worker: the serial
    run's :func:`proofs_check.evaluation.prediction_at` at each point (with the prior's log
    normalizer, as evaluate_spec computes it): the expansion's dict, or the reason it was skipped."""
    with _TASK_LOCK:
        try:
            from .bridge import log_normalizers, numeric_model
            from .evaluation import prediction_at

            t0 = time.perf_counter()
            part = _spec_part(task)
            with torch_threads(task["threads"]):
                log_norm = sum(log_normalizers(numeric_model(part)))
                hits = [prediction_at(part, [float(v) for v in p], log_norm) for p in part.points]
            return {"predictions": hits, "seconds": time.perf_counter() - t0, "worker": _worker_info()}
        except Exception as exc:
            return {"error": _error_record(exc)}


#: The verification context of the run a worker process is part of: (run key, Context, keys
#: already sent back).  Claims of one run on one worker share its cache, as in the serial run.
_RUN: dict[str, Any] = {}


def _figure_data(key: Any) -> bool:
    """Cache entries the figure phase (proofs_check.plots) reads and the client therefore gets
    back: the γ² sweeps of the built-in models (Context.sweep) and C17's family data."""
    return isinstance(key, tuple) and bool(key) and (key[0] == "sweep" or (key[:2] == ("C17", "family") and key[-1] is False))


def _claim_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Check the claims ``task["claims"]`` (and their planted faults) in a worker, in order."""
    with _TASK_LOCK:
        try:
            from .context import Context
            from .verification import run_claim, select_claims

            if _RUN.get("key") != task["run"]:
                _RUN.clear()
                _RUN.update(key=task["run"], ctx=Context(mode=task["mode"], seed=task["seed"], device=task["device"]), sent=set())
            ctx = _RUN["ctx"]
            with torch_threads(task["threads"]), warnings.catch_warnings():
                # the worker's own threads (Dask's event loop) draw from the global `random` while a
                # property runs; hypothesis takes the changed state for the strategy's doing
                warnings.filterwarnings("ignore", message="Do not use the `random` module inside strategies")
                entries = [run_claim(c, ctx) for c in select_claims(task["claims"])]
            new = {k: v for k, v in ctx.cache.items() if _figure_data(k) and k not in _RUN["sent"]}
            _RUN["sent"].update(new)
            return {"entries": entries, "cache": new, "worker": _worker_info()}
        except Exception as exc:
            return {"error": _error_record(exc)}


def _forget_run(key: str) -> None:
    """Drop a finished run's cache from a worker process (run on every worker at the end)."""
    if _RUN.get("key") == key:
        _RUN.clear()


# ----------------------------------------------------------------------------------------
# Client side
# ----------------------------------------------------------------------------------------


TaskFn = Callable[[Mapping[str, Any]], dict[str, Any]]


class _Tasks:
    """Tasks submitted at once, answered in submission order: ``get(i)`` waits until task ``i``
    is done (updating the progress bar as any task finishes) and returns its answer."""

    def __init__(self, client: Any, fn: TaskFn | Sequence[TaskFn], tasks: Sequence[Mapping[str, Any]],
                 weights: Sequence[int], bar: Any, priorities: Sequence[float] | None = None, label: str = "task") -> None:
        dist = _import_distributed()
        tag = uuid.uuid4().hex[:12]
        fns = list(fn) if isinstance(fn, Sequence) else [fn] * len(tasks)
        prio = [0.0] * len(tasks) if priorities is None else list(priorities)
        # submitted in priority order too: idle workers take the first tasks that arrive
        order = sorted(range(len(tasks)), key=lambda i: (-prio[i], i))
        futures = {i: client.submit(fns[i], tasks[i], key=f"gapcheck-{label}-{tag}-{i}", pure=False, priority=prio[i])
                   for i in order}
        self._futures = [futures[i] for i in range(len(tasks))]
        self._index = {f.key: i for i, f in enumerate(self._futures)}
        self._pending = dist.as_completed(self._futures)
        self._answers: dict[int, dict[str, Any]] = {}
        self._weights = list(weights)
        self._bar = bar
        self._client = client
        self.workers: list[dict[str, str]] = []

    def get(self, i: int) -> dict[str, Any]:
        while i not in self._answers:
            fut = next(self._pending)
            j = self._index[fut.key]
            try:
                ans = fut.result()
            except Exception as exc:  # the cluster failed, not the computation (that is an answer)
                raise ClusterError(_cluster_failure(exc)) from None
            if "worker" in ans:
                self.workers.append(ans["worker"])
            self._answers[j] = ans
            if self._bar is not None:
                self._bar.update(self._weights[j])
        ans = self._answers.pop(i)
        if "error" in ans:
            _reraise(ans["error"])
        return ans

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self._client.cancel([f for f in self._futures if not f.done()])


def _cluster_failure(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, (ModuleNotFoundError, ImportError)) or "No module named" in str(exc):
        return (f"a Dask worker cannot import gapcheck ({name}: {exc}); install gapcheck (the same version) on every "
                "worker, or start the workers where gapcheck is importable")
    return f"the Dask cluster failed to run a task ({name}: {exc})"


def _warn_versions(workers: Sequence[Mapping[str, str]]) -> None:
    """Bit-for-bit equality with a serial run here needs the same torch and gapcheck on the workers."""
    if not workers:
        return
    here = _worker_info()
    other = sorted({f"{w['host']}: torch {w['torch']}, gapcheck {w['gapcheck']}" for w in workers
                    if (w["torch"], w["gapcheck"]) != (here["torch"], here["gapcheck"])})
    if other:
        print(f"gapcheck: warning: Dask workers run other versions than this machine (torch {here['torch']}, "
              f"gapcheck {here['gapcheck']}): {'; '.join(other)}; results may differ in the last bits from a serial run here",
              file=sys.stderr)
    trimmed = sorted({w["host"] for w in workers if w.get("malloc_trim")})
    if trimmed:
        print(f"gapcheck: note: Dask workers on {', '.join(trimmed)} run with {SLOW_MALLOC} set (Dask's default), which "
              f"makes large torch work up to 3x slower; start them with "
              f"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\"{{'{SLOW_MALLOC}': None}}\" (docs/distributed.md)", file=sys.stderr)


def _bar(total: int, desc: str, unit: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not progress, leave=False)


def plan_points(points: Sequence[int], chunk: int | Sequence[int], workers: int) -> list[tuple[int, int, int]]:
    """The tasks of a sweep whose specs have ``points[i]`` latent points: (spec, start, stop),
    each a run of whole ``chunk``-point chunks of one spec (one size, or one per spec: the
    batches evaluate_spec forms, so
    the numbers are the serial run's), about four tasks per worker over the sweep and at most
    16 chunks per task (for the progress bar and streaming); a spec without points is one task
    (which reports the spec's error as the serial run does)."""
    chunks = [chunk] * len(points) if isinstance(chunk, int) else list(chunk)
    per_task = max(1, min(16, math.ceil(sum(math.ceil(n / c) for n, c in zip(points, chunks)) / (4 * max(1, workers)))))
    plan: list[tuple[int, int, int]] = []
    for s, (n, c) in enumerate(zip(points, chunks)):
        plan += [(s, a, min(n, a + per_task * c)) for a in range(0, n, per_task * c)] or [(s, 0, 0)]
    return plan


def plan_predictions(numbers: Sequence[tuple[int, int, int]], workers: int) -> list[tuple[int, int, int]]:
    """The symbolic-prediction tasks (theory.expansions, one sympy expansion per point, often
    the larger part of the cost) of a sweep whose numeric tasks are ``numbers``: each numeric
    task's points cut into runs of at most 64 (about eight tasks per worker over the sweep:
    the cost per point varies tenfold between specs, so small tasks balance the workers).
    Predictions of different points are independent, so any cut gives the serial numbers."""
    total = sum(b - a for _, a, b in numbers)
    per_task = max(1, min(64, math.ceil(total / (8 * max(1, workers)))))
    return [(s, p, min(b, p + per_task)) for s, a, b in numbers for p in range(a, b, per_task)]


def set_predictions(sym: Any, results: Sequence[Any], runs: Sequence[tuple[int, int, Sequence[Any]]]) -> None:
    """Give each result the prediction of its latent point: ``runs`` holds (start, stop, the
    predictions at ``sym.points[start:stop]``) from :func:`_predict_task`; results are matched by
    point as attach_predictions matches them (the same dict, or skip reason, for every γ² of a point)."""
    from .evaluation import set_prediction

    preds: dict[tuple[float, ...], Any] = {}
    for a, b, values in runs:
        for point, pred in zip(sym.points[a:b], values):
            preds.setdefault(tuple(float(v) for v in point), pred)
    for r in results:
        set_prediction(r, preds[tuple(r.latent)])


class SpecSweep:
    """`gapcheck evaluate` of several specs on a cluster.  ``result(i, on_result)`` (or
    ``next_result(on_result)``, for the specs in turn) returns the
    :class:`~proofs_check.evaluation.Evaluation` of spec ``i`` once its tasks are done, calling
    ``on_result`` with each of its results in the serial order; all tasks are submitted at
    construction, so later specs compute while earlier ones are read.  Use as a context
    manager (it owns the client, and a local cluster).

    The numbers (numerics.sweep) of whole point chunks and the symbolic predictions of runs of
    points are separate tasks; a spec's results get their predictions here, keyed by latent
    point as :func:`proofs_check.evaluation.attach_predictions` does."""

    def __init__(self, specs: Sequence[tuple[SpecSource, Any]], options: Mapping[str, Any], cluster: Cluster | ClientStart,
                 progress: bool = False) -> None:
        from .evaluation import default_chunk

        self._specs = list(specs)
        self._next = 0
        options = dict(options)
        given = options.pop("chunk", None)
        if given is not None and given < 1:
            raise ValueError("chunk must be >= 1")
        # each spec in the batches of its serial run (evaluation.default_chunk unless a chunk is given)
        chunks = [int(given) if given is not None else default_chunk(sym) for _, sym in self._specs]
        self._predict = bool(options.pop("predictions", True))
        options.update(progress=False, predictions=False)
        self._stack = contextlib.ExitStack()
        try:
            client = self._stack.enter_context(_client_of(cluster))
            workers = _n_workers(client)
            numbers = plan_points([len(sym.points) for _, sym in self._specs], chunks, workers)
            predictions = plan_predictions(numbers, workers) if self._predict else []
            # per spec: its numeric tasks, then its prediction tasks (the serial order of the work)
            self._plan = sorted([(s, 0, a, b) for s, a, b in numbers] + [(s, 1, a, b) for s, a, b in predictions])
            tasks = []
            for s, kind, a, b in self._plan:
                task = {"spec": dataclasses.asdict(self._specs[s][0]), "start": a, "stop": b, "threads": default_threads()}
                tasks.append({**task, "options": {**options, "chunk": chunks[s]}} if kind == 0 else task)
            weights = [b - a for _, _, a, b in self._plan]
            desc = "evaluate (numbers, predictions)" if self._predict else "evaluate"
            bar = self._stack.enter_context(_bar(sum(weights), desc, "point", progress))
            fns = [_evaluate_task if kind == 0 else _predict_task for _, kind, _, _ in self._plan]
            # every numeric task before any prediction task: a numeric task cannot be cut below a
            # chunk and costs up to ten times more for one spec than another, while the
            # predictions come in small pieces that fill the workers at the end (measured: with
            # the serial order a 14 s numeric task ran last and left a worker idle for 7 s)
            priorities = [1 if kind == 0 else 0 for _, kind, _, _ in self._plan]
            self._tasks = _Tasks(client, fns, tasks, weights, bar, priorities, label="evaluate")
            self._stack.callback(self._tasks.cancel)
        except BaseException:
            self._stack.close()
            raise

    def next_result(self, on_result: Callable[[Any], None] | None = None, keep_results: bool = True) -> Any:
        """The Evaluation of the next spec (in the order given), as :meth:`result`."""
        if self._next >= len(self._specs):
            raise IndexError("every spec's result has been read")
        self._next += 1
        return self.result(self._next - 1, on_result, keep_results)

    def result(self, i: int, on_result: Callable[[Any], None] | None = None, keep_results: bool = True) -> Any:
        """With ``keep_results=False`` the results are only handed to ``on_result``, as
        :func:`proofs_check.evaluation.evaluate_spec` does (``.count`` counts them)."""
        from .evaluation import Evaluation

        sym = self._specs[i][1]
        results: list[Any] = []
        count = 0
        seconds = 0.0
        device = ""
        mine = [(t, kind, a, b) for t, (s, kind, a, b) in enumerate(self._plan) if s == i]
        for t, kind, a, b in mine:
            if kind != 0:
                continue
            ans = self._tasks.get(t)  # the numbers first: their error is the one the serial run meets first
            part = ans["results"]
            seconds += ans["seconds"]
            device = device or ans["device"]
            if self._predict:
                runs = [(pa, pb, self._tasks.get(u)) for u, kind_u, pa, pb in mine if kind_u == 1 and a <= pa < b]
                seconds += sum(ans["seconds"] for _, _, ans in runs)
                set_predictions(sym, part, [(pa, pb, ans["predictions"]) for pa, pb, ans in runs])
            for r in part:
                if on_result is not None:
                    on_result(r)
            count += len(part)
            if keep_results:
                results += part
        if i == len(self._specs) - 1:
            _warn_versions(self._tasks.workers)
        return Evaluation(sym, results, seconds, device, count)

    def __enter__(self) -> SpecSweep:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()


# -- verify --------------------------------------------------------------------------------

#: Claims that read the γ² sweeps C7 computes (Context.sweep of the built-in models): they run
#: as one task, in registry order, so one worker computes those sweeps once, as the serial run
#: does (each apart, they would recompute ~20 s of sweeps).  A scheduling hint only: the
#: results do not depend on it.
CLAIM_GROUPS: tuple[tuple[str, ...], ...] = (("C7", "C8", "C9", "C10", "C11", "C12", "C14", "C15", "C16", "N2"),)

#: Seconds each claim (with its planted faults) took alone in default mode on the 2-core
#: development machine; the longest tasks are started first.  Unknown claims count 1 s.
CLAIM_COST_HINT: dict[str, float] = {
    "C1": 2.8, "C2": 0.8, "C3": 3.2, "C4": 0.7, "C5": 0.9, "C6": 0.1, "C7": 12.4, "C8": 1.0, "C9": 5.5, "C10": 4.3,
    "C11": 6.5, "C12": 3.3, "C13": 3.5, "C14": 1.8, "C15": 1.6, "C16": 4.7, "C17": 28.8, "N1": 2.1, "N2": 0.9, "V1": 15.0,
}


def claim_tasks(ids: Sequence[str]) -> list[list[str]]:
    """The claims ``ids`` (registry order) cut into tasks: the members of a
    :data:`CLAIM_GROUPS` group together (in the order given), every other claim alone."""
    tasks: list[list[str]] = []
    placed: set[str] = set()
    for cid in ids:
        if cid in placed:
            continue
        group = next((g for g in CLAIM_GROUPS if cid in g), (cid,))
        members = [c for c in ids if c in group]
        members.sort(key=group.index)
        tasks.append(members)
        placed.update(members)
    return tasks


def run_claims(claims: Sequence[Any], ctx: Any, cluster: Cluster | ClientStart, bar: Any = None) -> list[dict[str, Any]]:
    """The report entries of ``claims`` (``verification.run_claim`` for each, in the given
    order) computed on ``cluster``; ``ctx`` (the run's Context) gets the cached sweeps and C17
    data the figures need, so the figure phase recomputes nothing.  ``bar`` (tqdm) counts checks."""
    ids = [c.id for c in claims]
    faults = {c.id: len(c.faults) for c in claims}
    groups = claim_tasks(ids)
    run = uuid.uuid4().hex
    tasks = [{"run": run, "claims": g, "mode": ctx.mode, "seed": ctx.seed, "device": ctx.device, "threads": default_threads()}
             for g in groups]
    weights = [sum(1 + faults[c] for c in g) for g in groups]
    priorities = [sum(CLAIM_COST_HINT.get(c, 1.0) for c in g) for g in groups]
    with _client_of(cluster) as client:
        pending = _Tasks(client, _claim_task, tasks, weights, bar, priorities, label="verify")
        try:
            by_id: dict[str, dict[str, Any]] = {}
            for t, g in enumerate(groups):
                ans = pending.get(t)
                by_id.update(zip(g, ans["entries"]))
                for k, v in ans["cache"].items():
                    ctx.cache.setdefault(k, v)
        finally:
            pending.cancel()
            with contextlib.suppress(Exception):
                client.run(_forget_run, run)
    _warn_versions(pending.workers)
    return [by_id[i] for i in ids]
