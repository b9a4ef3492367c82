"""Run a method in a worker process with a per-vertebra time limit, so that a vertebra on which
the method hangs is stopped and recorded while the run goes on.

The worker is forked from the run's process, prepares the method (``fit``) itself and then
answers one vertebra index at a time; only the index goes to it and only the answer comes back.
A worker that is killed (time limit) or dies is replaced by a fresh fork, which prepares the
method again before the next vertebra. The run's process never runs the method itself, so its
thread pools (OpenMP, CUDA) are never started before a fork: a child forked after they were
would hang or fail. Where they were (a program that used torch before starting the run), the
method runs in the run's process without a time limit, and the run says so.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

Answer = TypeVar("Answer")

OK, FAILED, TIMEOUT = "ok", "failed", "timeout"


@dataclass(frozen=True)
class Outcome(Generic[Answer]):
    """What one call gave: ``ok`` with its answer, or ``failed`` / ``timeout`` with the reason."""

    status: str
    answer: Answer | None = None
    reason: str = ""


class PrepareError(RuntimeError):
    """The worker could not prepare the method; the message is the worker's error."""


def error_text(exc: BaseException) -> str:
    """``TypeName: message`` of an exception, as recorded in ``cases.csv``."""
    return f"{type(exc).__name__}: {exc}"


def call_safely(call: Callable[[int], Answer], index: int) -> Outcome[Answer]:
    """``call(index)`` in this process; an exception becomes a ``failed`` outcome."""
    try:
        return Outcome(OK, call(index))
    except Exception as exc:  # a method's failure is recorded, the run goes on
        return Outcome(FAILED, reason=error_text(exc))


PROBE_S = 10.0
"""How long a forked probe may take to run one parallel torch operation before forking is
judged to hang (it takes milliseconds when it works)."""
POOL_STARTED = "torch's CPU thread pool already ran in this process, so a forked worker would hang"
_pool_started = False


def torch_probe(connection: Connection) -> None:
    """Run one operation large enough for torch to use its CPU thread pool, then report."""
    import torch

    (torch.ones(1024, 1024) * 2).sum()
    connection.send(True)


def forked_torch_works() -> bool:
    """Whether a child forked now can use torch's CPU threads. It cannot once the parent ran
    them (GNU OpenMP does not survive a fork); that state is kept, as it never ends."""
    global _pool_started
    if not _pool_started:
        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe()
        probe = context.Process(target=torch_probe, args=(theirs,), daemon=True)
        probe.start()
        _pool_started = not ours.poll(PROBE_S)
        probe.kill()
        probe.join()
    return not _pool_started


def fork_unsafe() -> str:
    """Why this process must not fork a worker (``""`` when it may): forking is used on Linux
    only; CUDA cannot be used in a child forked after the parent initialised it; torch's CPU
    threads hang in a child forked after the parent used them (:func:`forked_torch_works`); a
    daemonic process (a Dask worker started with ``distributed.worker.daemon`` true) may not
    start one."""
    if not sys.platform.startswith("linux"):
        return "a worker process is forked on Linux only"
    if multiprocessing.current_process().daemon:
        return (
            "the process is daemonic (a Dask worker: start it with "
            "DASK_DISTRIBUTED__WORKER__DAEMON=False)"
        )
    torch = sys.modules.get("torch")
    if torch is None:
        return ""
    if torch.cuda.is_initialized():
        return "CUDA is initialised in the run's process"
    if torch.get_num_threads() > 1 and not forked_torch_works():
        return POOL_STARTED
    return ""


def serve(connection: Connection, prepare: Callable[[], Any], call: Callable[[int], Any]) -> None:
    """The worker: send ``prepare()``'s result (or its error), then answer each index received
    with :func:`call_safely`'s outcome."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle
    try:
        connection.send(Outcome(OK, prepare()))
    except Exception as exc:  # sent back whole, so that the run raises the same error
        try:
            connection.send(Outcome(FAILED, exc, error_text(exc)))
        except Exception:  # an exception that cannot be pickled
            connection.send(Outcome(FAILED, reason=error_text(exc)))
        return
    while True:
        try:
            index = connection.recv()
        except EOFError:
            return
        outcome = call_safely(call, index)
        try:
            connection.send(outcome)
        except Exception as exc:  # an answer that cannot be pickled
            connection.send(Outcome(FAILED, reason=f"answer cannot be returned: {error_text(exc)}"))


class TimedCalls(Generic[Answer]):
    """``call(index)`` with at most ``timeout_s`` seconds each, in a forked worker that first
    runs ``prepare()`` (no time limit).

    ``timeout_s`` of ``None`` runs both in this process without a limit, as does a process in
    which forking is unsafe (:func:`fork_unsafe`; :attr:`unenforced` then says why). Use it as a
    context manager so that the worker is stopped however the run ends; :meth:`prepared` gives
    ``prepare()``'s result.
    """

    def __init__(
        self, prepare: Callable[[], Any], call: Callable[[int], Answer], timeout_s: float | None
    ) -> None:
        self.prepare, self.call = prepare, call
        self.unenforced = fork_unsafe() if timeout_s is not None else ""
        self.timeout_s = None if self.unenforced else timeout_s
        self.process: multiprocessing.process.BaseProcess | None = None
        self.connection: Connection | None = None

    def __enter__(self) -> TimedCalls[Answer]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def prepared(self) -> Any:
        """``prepare()``'s result, run in the worker (started here) or in this process; what it
        raised is raised here (:class:`PrepareError` when it cannot be sent back)."""
        if self.timeout_s is None:
            return self.prepare()
        self.stop()
        return self.start()

    def __call__(self, index: int) -> Outcome[Answer]:
        """The outcome of ``call(index)``: ``ok``, ``failed`` (raised, or the worker died) or
        ``timeout``."""
        if self.timeout_s is None:
            return call_safely(self.call, index)
        if not self.running():
            self.start()
        assert self.connection is not None
        self.connection.send(index)
        if not self.connection.poll(self.timeout_s):
            self.stop()
            limit = f"{self.timeout_s:g} s"
            return Outcome(TIMEOUT, reason=f"no answer within the time limit of {limit}")
        try:
            return self.connection.recv()
        except (EOFError, OSError):
            code = self.stop()
            return Outcome(FAILED, reason=f"the worker process died (exit code {code})")

    def running(self) -> bool:
        """Whether a prepared worker is alive."""
        return self.process is not None and self.process.is_alive()

    def start(self) -> Any:
        """Fork a worker, wait for it to prepare the method and return what ``prepare`` gave."""
        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe()
        self.process = context.Process(
            target=serve, args=(theirs, self.prepare, self.call), daemon=True
        )
        self.process.start()
        theirs.close()
        self.connection = ours
        try:
            ready = ours.recv()
        except EOFError:
            code = self.stop()
            message = f"the worker process died preparing the method (exit code {code})"
            raise PrepareError(message) from None
        if ready.status != OK:
            self.stop()
            if isinstance(ready.answer, Exception):
                raise ready.answer
            raise PrepareError(ready.reason)
        return ready.answer

    def stop(self) -> int | None:
        """Kill the worker (if any) and return its exit code."""
        process, self.process = self.process, None
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        if process is None:
            return None
        if process.is_alive():
            process.kill()
        process.join()
        return process.exitcode
