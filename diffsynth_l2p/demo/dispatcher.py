"""A pool of workers (one pipeline each) with a bounded FIFO queue in front of it.

A request runs on an idle worker, or waits in the queue until one frees up; at most one request runs on a worker at a
time, so concurrency equals the number of workers. A request whose worker raises is retried once on another worker.

Each failure is a strike against its worker, except for errors of the request itself: ``request_errors`` (invalid
values, out of memory) and requests that fail on two different workers (the first worker's strike is taken back).
A worker with ``max_consecutive_failures`` strikes in a row is retired from rotation, reported in the log, and let
back in on probation (one more strike retires it again) after ``cooldown_seconds``.
"""

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Generic, List, Sequence, Tuple, Type, TypeVar

logger = logging.getLogger(__name__)

W = TypeVar("W")
T = TypeVar("T")

# Errors that say the request is wrong, not the worker: they never count toward retiring a worker.
REQUEST_ERRORS: Tuple[Type[BaseException], ...] = (ValueError, TypeError)


class QueueFullError(RuntimeError):
    """Raised at once when every worker is busy and the waiting queue is full."""


class NoWorkerError(RuntimeError):
    """Raised when no worker can take a request (all retired, or the pool is shutting down)."""


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    busy: bool
    retired: bool
    completed: int
    failed: int


@dataclass(frozen=True)
class PoolStatus:
    workers: List[WorkerStatus]
    queued: int
    max_queue: int

    @property
    def busy(self) -> int:
        return sum(worker.busy for worker in self.workers)

    @property
    def active(self) -> int:
        return sum(not worker.retired for worker in self.workers)


@dataclass
class _Slot(Generic[W]):
    worker: W
    name: str
    busy: bool = False
    retired: bool = False
    completed: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    retired_at: float = 0.0  # time.monotonic() of the retirement


@dataclass
class _Ticket:
    request_id: int
    exclude: frozenset = frozenset()
    slot: _Slot | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Dispatcher(Generic[W]):
    """Runs ``task(worker)`` calls on a fixed set of workers, one call per worker at a time."""

    def __init__(
        self,
        workers: Sequence[W],
        max_queue: int,
        max_consecutive_failures: int = 3,
        names: Sequence[str] | None = None,
        request_errors: Tuple[Type[BaseException], ...] = REQUEST_ERRORS,
        cooldown_seconds: float | None = 300.0,
    ):
        if not workers:
            raise ValueError("The dispatcher needs at least one worker.")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}.")
        if max_consecutive_failures < 1:
            raise ValueError(f"max_consecutive_failures must be >= 1, got {max_consecutive_failures}.")
        if cooldown_seconds is not None and cooldown_seconds < 0:
            raise ValueError(f"cooldown_seconds must be >= 0 (or None to retire for good), got {cooldown_seconds}.")
        names = list(names) if names is not None else [f"worker-{index}" for index in range(len(workers))]
        if len(names) != len(workers) or len(set(names)) != len(names):
            raise ValueError("names must be unique and one per worker.")
        self._slots = [_Slot(worker, name) for worker, name in zip(workers, names, strict=True)]
        self.max_queue = max_queue
        self.max_consecutive_failures = max_consecutive_failures
        self.request_errors = tuple(request_errors)
        self.cooldown_seconds = cooldown_seconds
        self._queue: Deque[_Ticket] = collections.deque()
        self._lock = threading.Condition()
        self._next_request_id = 0
        self._closed = False

    @property
    def num_workers(self) -> int:
        return len(self._slots)

    def status(self) -> PoolStatus:
        with self._lock:
            self._readmit_cooled_down()
            workers = [WorkerStatus(s.name, s.busy, s.retired, s.completed, s.failed) for s in self._slots]
            return PoolStatus(workers, len(self._queue), self.max_queue)

    def run(self, task: Callable[[W], T]) -> T:
        """Run ``task`` on a free worker (waiting in the queue if needed) and return its result.

        Raises `QueueFullError` at once when the queue is full, `NoWorkerError` when no worker is left, and the task's
        own exception when it fails on two different workers (or on the only worker left).
        """
        with self._lock:
            request_id = self._next_request_id
            self._next_request_id += 1
        slot = self._acquire(_Ticket(request_id), front=False)
        try:
            return self._run_on(slot, task, request_id, may_strike=True)
        except Exception as first_error:
            try:
                retry_slot = self._acquire(_Ticket(request_id, exclude=frozenset({slot.name})), front=True)
            except NoWorkerError:
                raise first_error from None
            logger.warning("request %d: retrying on %s after %s failed", request_id, retry_slot.name, slot.name)
            try:
                return self._run_on(retry_slot, task, request_id, may_strike=False)
            except Exception:
                if not isinstance(first_error, self.request_errors):
                    self._take_back_strike(slot, request_id)
                raise

    def shutdown(self, timeout: float | None = None) -> bool:
        """Refuse new requests, fail queued ones, and wait for running ones; True when all finished in time."""
        with self._lock:
            self._closed = True
            while self._queue:
                self._fail(self._queue.popleft(), NoWorkerError("The demo server is shutting down."))
            return self._lock.wait_for(lambda: not any(s.busy for s in self._slots), timeout)

    def _run_on(self, slot: _Slot, task: Callable[[W], T], request_id: int, may_strike: bool) -> T:
        """Run ``task`` on the booked ``slot``; a failure is a strike only if ``may_strike`` and not a request error."""
        logger.info("request %d: started on %s", request_id, slot.name)
        start = time.perf_counter()
        ok = strike = False
        try:
            result = task(slot.worker)
            ok = True
        except Exception as error:
            logger.warning("request %d: failed on %s: %s", request_id, slot.name, error)
            strike = may_strike and not isinstance(error, self.request_errors)
            raise
        finally:
            self._release(slot, ok, strike)
        logger.info("request %d: done on %s in %.2f s", request_id, slot.name, time.perf_counter() - start)
        return result

    def _acquire(self, ticket: _Ticket, front: bool) -> _Slot:
        with self._lock:
            self._readmit_cooled_down()
            if self._closed:
                raise NoWorkerError("The demo server is shutting down.")
            if not self._eligible(ticket):
                raise NoWorkerError(self._no_worker_message())
            if front:  # a retry: ahead of new requests, behind earlier retries
                self._queue.insert(sum(1 for queued in self._queue if queued.exclude), ticket)
            else:
                self._queue.append(ticket)
            for slot in self._slots:
                self._hand_over(slot)
            if not ticket.done.is_set() and not front and len(self._queue) > self.max_queue:
                self._queue.remove(ticket)
                raise QueueFullError(
                    f"The demo is busy: every worker is generating and the waiting queue is full "
                    f"({self.max_queue} requests). Please try again in a moment."
                )
        ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error
        return ticket.slot

    def _release(self, slot: _Slot, ok: bool, strike: bool) -> None:
        with self._lock:
            slot.busy = False
            if ok:
                slot.completed += 1
                slot.consecutive_failures = 0
            else:
                slot.failed += 1
            if strike:
                slot.consecutive_failures += 1
                if slot.consecutive_failures >= self.max_consecutive_failures:
                    slot.retired = True
                    slot.retired_at = time.monotonic()
                    logger.error(
                        "worker %s failed %d requests in a row; taken out of rotation (%d of %d workers left)%s",
                        slot.name,
                        slot.consecutive_failures,
                        sum(not s.retired for s in self._slots),
                        self.num_workers,
                        "" if self.cooldown_seconds is None else f"; back in {self.cooldown_seconds:g} s",
                    )
                    self._fail_unservable()
            self._readmit_cooled_down()
            self._hand_over(slot)
            self._lock.notify_all()

    def _take_back_strike(self, slot: _Slot, request_id: int) -> None:
        """The request failed on another worker too, so it was the request's fault, not ``slot``'s."""
        with self._lock:
            slot.consecutive_failures = max(0, slot.consecutive_failures - 1)
            if slot.retired and slot.consecutive_failures < self.max_consecutive_failures:
                self._readmit(slot, f"request {request_id} failed on another worker too")

    def _readmit_cooled_down(self) -> None:
        if self.cooldown_seconds is None:
            return
        for slot in self._slots:
            if slot.retired and time.monotonic() - slot.retired_at >= self.cooldown_seconds:
                slot.consecutive_failures = self.max_consecutive_failures - 1  # on probation
                self._readmit(slot, f"a {self.cooldown_seconds:g} s cool-down")

    def _readmit(self, slot: _Slot, reason: str) -> None:
        slot.retired = False
        logger.warning("worker %s back in rotation after %s", slot.name, reason)
        self._hand_over(slot)
        self._lock.notify_all()

    def _hand_over(self, slot: _Slot) -> None:
        """Give ``slot``, if it is free and in rotation, to the oldest queued ticket that may use it."""
        if slot.busy or slot.retired:
            return
        for ticket in self._queue:
            if slot.name not in ticket.exclude:
                self._queue.remove(ticket)
                slot.busy = True
                ticket.slot = slot
                ticket.done.set()
                return

    def _eligible(self, ticket: _Ticket) -> bool:
        return any(not s.retired and s.name not in ticket.exclude for s in self._slots)

    def _fail_unservable(self) -> None:
        for ticket in [t for t in self._queue if not self._eligible(t)]:
            self._queue.remove(ticket)
            self._fail(ticket, NoWorkerError(self._no_worker_message()))

    def _no_worker_message(self) -> str:
        retired = [s for s in self._slots if s.retired]
        names = ", ".join(s.name for s in retired)
        comeback = ""
        if retired and self.cooldown_seconds is not None:
            wait = min(s.retired_at for s in retired) + self.cooldown_seconds - time.monotonic()
            comeback = f"; the first one is back in {max(wait, 0):.0f} s"
        return (
            f"No worker is available to run this request (taken out of rotation after repeated failures: {names})"
            f"{comeback}."
        )

    @staticmethod
    def _fail(ticket: _Ticket, error: BaseException) -> None:
        ticket.error = error
        ticket.done.set()
