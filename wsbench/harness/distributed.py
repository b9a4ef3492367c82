"""Run methods on a Dask cluster (``--workers N`` or ``--scheduler ADDR``): each task segments
one chunk of one method's vertebrae in a worker, the client writes every record.

For each method the client prepares the data, opens the run directory and fits the method once
(:func:`~wsbench.harness.runner.open_run`, in a forked worker when a time limit applies), so that
a model trained in ``fit`` is stored before any task runs and tasks only load it. The vertebrae
left to segment are cut into chunks (:func:`chunk_size`) and all methods' chunks go to one task
pool. The prepared data is sent to every worker once (unpickling it costs a tenth of preparing
it); a task fits the method in its worker (kept while the worker's tasks are of the same
method) and returns the outcomes; the client
stores each vertebra with :func:`~wsbench.harness.runner.store_vertebra` as they arrive, so an
interrupted run resumes from the vertebrae already written, and finishes each run with
:func:`~wsbench.harness.runner.close_run`. Per-vertebra seeds and torch's thread count are the
single process's, so the results are the same whatever the number of workers.

A task whose worker dies is run again on another worker by Dask (a task that keeps killing
workers fails after ``distributed.scheduler.allowed-failures`` deaths); a task that raises is
retried :data:`RETRIES` times.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsbench.contract import PreparedDataset, Split
from wsbench.files import digest
from wsbench.harness.provenance import torch_threads
from wsbench.harness.registry import load_method
from wsbench.harness.rundir import RunError
from wsbench.harness.runner import (
    Answers,
    OpenRun,
    RunConfig,
    RunResult,
    answer_slices,
    close_run,
    default_notify,
    finished_record,
    method_calls,
    open_run,
    record_prepared,
    store_vertebra,
    timed,
)
from wsbench.harness.worker import Outcome, TimedCalls

if TYPE_CHECKING:
    from distributed import Client, Future

CHUNKS_PER_WORKER = 4
"""Chunks each worker gets of a method at least (when it has that many vertebrae): with
several per worker, the last chunks finish close together, so no worker idles long at the
end."""
MAX_CHUNK = 8
"""Most vertebrae in one task: enough that a task's round trip (scheduling, sending the
answers back) is small beside its work, few enough that a worker that dies loses little."""
RETRIES = 2
"""Times Dask runs a task again after it raised (a file briefly unreadable on a shared
disk); a method's own errors are recorded per vertebra and never raise."""
CONNECT_S = 30
"""Seconds to wait for a ``--scheduler`` to answer before giving up."""
WORKERS_S = 120
"""Seconds to wait for a first worker to join the cluster before giving up."""


def chunk_size(left: int, workers: int) -> int:
    """Vertebrae per task for a method with ``left`` vertebrae to segment on ``workers``
    workers: :data:`CHUNKS_PER_WORKER` chunks per worker, at most :data:`MAX_CHUNK` each."""
    return max(1, min(MAX_CHUNK, math.ceil(left / (CHUNKS_PER_WORKER * max(1, workers)))))


def chunks(indices: list[int], size: int) -> list[tuple[int, ...]]:
    """``indices`` cut into consecutive runs of ``size``."""
    return [tuple(indices[i : i + size]) for i in range(0, len(indices), size)]


@dataclass(frozen=True)
class Chunk:
    """One task: segment the vertebrae at ``indices`` of the split of ``config``, each within
    ``limit`` seconds, with ``threads`` torch threads."""

    config: RunConfig
    indices: tuple[int, ...]
    limit: float | None
    threads: int | None


@dataclass(frozen=True)
class ChunkResult:
    """A task's answer: each vertebra's outcome by index, the seconds spent segmenting and why
    the worker could not enforce the time limit (``""`` when it could)."""

    outcomes: list[tuple[int, Outcome[Answers]]]
    seconds: float
    unenforced: str


_methods = threading.local()
TRIM_SETTING = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
"""Dask's setting of the worker processes' glibc trim threshold (unset: glibc's default)."""


def worker_calls(chunk: Chunk, dataset: PreparedDataset) -> TimedCalls[Any]:
    """The fitted method of ``chunk`` in this worker thread: kept from the previous task when
    it was of the same configuration, time limit and data, else built and fitted now (the
    previous one stopped)."""
    key = digest([chunk.config.as_dict(), chunk.limit, dataset.fingerprint])
    kept: tuple[str, TimedCalls[Any]] | None = getattr(_methods, "kept", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    if kept is not None:
        kept[1].stop()
    _methods.kept = None
    calls = method_calls(chunk.config, load_method(chunk.config.method), dataset, chunk.limit)
    calls.prepared()
    _methods.kept = (key, calls)
    return calls


def segment_chunk(chunk: Chunk, dataset: PreparedDataset) -> ChunkResult:
    """The task: the outcomes of the vertebrae of ``chunk`` of the prepared ``dataset`` (sent
    by the client), segmented in this worker."""
    torch_threads(chunk.threads)
    calls = worker_calls(chunk, dataset)
    vertebrae = dataset.split(Split(chunk.config.split))
    start = time.perf_counter()
    outcomes = [(index, answer_slices(calls, index, vertebrae[index], chunk.config.offsets))
                for index in chunk.indices]  # fmt: skip
    return ChunkResult(outcomes, time.perf_counter() - start, calls.unenforced)


@dataclass
class MethodRun:
    """One method's run in the pool: its configuration and how to report on it."""

    name: str
    config: RunConfig
    resume: bool = False
    progress: Callable[[int, int, str], None] | None = None


@dataclass
class Job:
    """A method's run under way: its open run, the records written so far (by index) and the
    tasks still out."""

    run: MethodRun
    opened: OpenRun
    records: dict[int, dict[str, Any]]
    pending: set[Future] = field(default_factory=set)
    segment_s: float = 0.0
    warned: bool = False

    def done(self) -> int:
        """Vertebrae recorded so far."""
        return len(self.records)


def start_job(
    item: MethodRun, out: Path, timeout_s: float | None, retry_failed: bool,
    notify: Callable[[str], None], prepared: PreparedDataset | None,
) -> tuple[Job, list[int]]:  # fmt: skip
    """Open the run of ``item`` (on the data ``prepared`` when given), fit its method once here
    (so that a model it trains is stored before any task loads it) and return it with the
    indices of the vertebrae left to segment."""
    opened = open_run(item.config, out, item.resume, timeout_s, notify, prepared)
    with method_calls(item.config, opened.method_cls, opened.dataset, opened.limit) as calls:
        if calls.unenforced:
            opened.warn(f"the time limit of {opened.limit:g} s is not enforced: {calls.unenforced}")
        with timed(opened.timings, "fit"):
            fitted = calls.prepared()
    record_prepared(opened, fitted)
    records: dict[int, dict[str, Any]] = {}
    left = []
    for index, vertebra in enumerate(opened.vertebrae):
        record = finished_record(opened.run_dir, vertebra.key.id, retry_failed, opened.warn)
        if record is None:
            left.append(index)
        else:
            records[index] = record
    return Job(item, opened, records), left


def finish_job(job: Job, workers: int, scheduler: str, size: int) -> RunResult:
    """Close the run of ``job``: its summed segment time and where it ran in the manifest."""
    job.opened.timings["segment"] = round(job.segment_s, 3)
    job.opened.manifest["distributed"] = {"scheduler": scheduler, "workers": workers,
                                          "chunk_size": size}  # fmt: skip
    return close_run(job.opened, [job.records[i] for i in sorted(job.records)])


def store_chunk(job: Job, result: ChunkResult) -> None:
    """Write the vertebrae of a finished task and report progress."""
    opened = job.opened
    if result.unenforced and not job.warned:
        job.warned = True
        opened.warn(f"the time limit of {opened.limit:g} s is not enforced in a worker: "
                    f"{result.unenforced}")  # fmt: skip
    job.segment_s += result.seconds
    for index, outcome in result.outcomes:
        vertebra = opened.vertebrae[index]
        lesion_metrics = opened.dataset.lesion_metrics
        job.records[index] = store_vertebra(opened.run_dir, vertebra, outcome, lesion_metrics,
                                            opened.offsets)  # fmt: skip
        if job.run.progress is not None:
            job.run.progress(job.done(), len(opened.vertebrae), vertebra.key.id)


def task_error(job: Job, chunk: Chunk, exc: BaseException) -> Exception:
    """The error a method's run ends with when one of its tasks failed for good; a task whose
    workers kept dying names the vertebrae it held."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        ids = ", ".join(job.opened.vertebrae[i].key.id for i in chunk.indices)
        return RunError(
            f"{job.run.name}: the workers segmenting {ids} died each time (Dask's "
            "distributed.scheduler.allowed-failures); read the workers' logs, then run again: "
            "the vertebrae already written are kept"
        )
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def run_methods(
    client: Client,
    runs: list[MethodRun],
    out: Path,
    finished: Callable[[str, RunResult | Exception], None],
    timeout_s: float | None = None,
    retry_failed: bool = True,
    notify: Callable[[str], None] = default_notify,
    prepared: PreparedDataset | None = None,
) -> None:
    """Run every method of ``runs`` on the workers of ``client``, all chunks in one pool (on the
    data ``prepared`` once for all of them, when given); ``finished`` receives each method's
    result, or the error that stopped it, as it ends."""
    from distributed import as_completed

    scheduler = client.scheduler.address
    try:
        client.wait_for_workers(1, timeout=WORKERS_S)
    except TimeoutError:
        raise RunError(
            f"no Dask worker joined the scheduler at {scheduler} within {WORKERS_S} s; start "
            "workers (`dask worker ADDRESS --nthreads 1`) or check their logs"
        ) from None
    workers = len(client.scheduler_info()["workers"])
    threads = torch_threads()
    tasks: dict[Future, tuple[Job, Chunk, int]] = {}
    sent: dict[int, Future] = {}  # each prepared dataset is sent to every worker once
    pool = as_completed()
    for item in runs:
        try:
            job, left = start_job(item, out, timeout_s, retry_failed, notify, prepared)
        except Exception as exc:  # recorded as this method's failure, the others go on
            finished(item.name, exc)
            continue
        size = chunk_size(len(left), workers)
        if not left:
            finished(item.name, finish_job(job, workers, scheduler, size))
            continue
        data = job.opened.dataset
        if id(data) not in sent:
            sent[id(data)] = client.scatter(data, broadcast=True, hash=False)
        for part in chunks(left, size):
            chunk = Chunk(item.config, part, job.opened.limit, threads)
            future = client.submit(segment_chunk, chunk, sent[id(data)], retries=RETRIES,
                                   pure=False)  # fmt: skip
            tasks[future] = (job, chunk, size)
            job.pending.add(future)
            pool.add(future)
    for future in pool:
        job, chunk, size = tasks.pop(future)
        if future not in job.pending:  # its method already failed
            continue
        job.pending.discard(future)
        try:
            store_chunk(job, future.result())
        except Exception as exc:  # recorded as this method's failure, the others go on
            client.cancel(list(job.pending))
            job.pending.clear()
            finished(job.run.name, task_error(job, chunk, exc))
            continue
        if not job.pending:
            finished(job.run.name, finish_job(job, workers, scheduler, size))


@contextmanager
def dask_pool(workers: int, scheduler: str | None) -> Iterator[Client | None]:
    """:func:`dask_client` when ``workers`` is above 1 or a ``scheduler`` is given, else
    ``None`` (the single-process path: nothing of Dask is imported)."""
    if workers == 1 and scheduler is None:
        yield None
        return
    with dask_client(workers, scheduler) as client:
        yield client


@contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Client]:
    """A Dask client of the cluster at ``scheduler``, else of a :class:`LocalCluster` of
    ``workers`` single-threaded worker processes, closed at the end."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise RunError(
            "--workers above 1 and --scheduler need Dask: pip install 'dask[distributed]'"
        ) from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_S)
        except OSError as exc:
            raise RunError(
                f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_S} s ({exc}); "
                "check the address (tcp://HOST:PORT) and that the scheduler runs"
            ) from None
        with client:
            yield client
        return
    if workers < 1:
        raise RunError(f"--workers {workers}: give a positive number of worker processes")
    # non-daemonic workers, so that they may fork the per-vertebra time limit's process; and
    # glibc's default trim threshold instead of Dask's 64 KiB, which returns torch's freed
    # buffers to the kernel after every operation (DDIM sampling 1.5x slower, 4x the system
    # time; docs/distributed.md). Set for the whole process: a nanny reads both again when it
    # restarts a worker that died
    dask.config.set({"distributed.worker.daemon": False, TRIM_SETTING: None})
    cluster = LocalCluster(n_workers=0, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)  # fmt: skip
    cluster.scale(workers)  # the workers start while the client prepares the data
    with cluster, Client(cluster) as client:
        yield client


def run_distributed(
    config: RunConfig,
    out: Path,
    workers: int,
    scheduler: str | None = None,
    resume: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    timeout_s: float | None = None,
    retry_failed: bool = True,
    notify: Callable[[str], None] = default_notify,
) -> RunResult:
    """:func:`~wsbench.harness.runner.run` on Dask workers (:func:`dask_client`)."""
    results: dict[str, RunResult | Exception] = {}
    with dask_client(workers, scheduler) as client:
        run_methods(client, [MethodRun(config.method, config, resume, progress)], out,
                    results.__setitem__, timeout_s, retry_failed, notify)  # fmt: skip
    result = results[config.method]
    if isinstance(result, Exception):
        raise result
    return result
