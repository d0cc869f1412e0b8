"""Dispatcher behaviour with fake workers: booking, FIFO order, retries, retirement, cool-down, queue bound, shutdown.

Two kinds of failure: a broken worker (``FakeWorker(fail=True)``) fails every request it runs, a bad request
(``work(..., error=...)``) fails on every worker.
"""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from diffsynth_l2p.demo.dispatcher import Dispatcher, NoWorkerError, QueueFullError
from diffsynth_l2p.demo.worker import REQUEST_ERRORS

TIMEOUT = 10.0


def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


class FakeWorker:
    """Records how many requests run on it at once; optionally fails or blocks."""

    def __init__(self, name: str, fail: bool = False):
        self.name = name
        self.fail = fail
        self.running = 0
        self.max_running = 0
        self.served = []
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def work(self, request: int, seconds: float = 0.0, error: Exception | None = None) -> tuple:
        """Serve ``request``; raise ``error`` (a bad request) on any worker, or fail here if this worker is broken."""
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            assert self.gate.wait(TIMEOUT)
            time.sleep(seconds)
            if error is not None:
                raise error
            if self.fail:
                raise RuntimeError(f"{self.name} is broken")
            self.served.append(request)
            return self.name, request
        finally:
            with self._lock:
                self.running -= 1


def make_pool(*workers: FakeWorker, max_queue: int = 64, max_failures: int = 3, **kwargs) -> Dispatcher:
    return Dispatcher(list(workers), max_queue, max_failures, names=[w.name for w in workers], **kwargs)


def test_many_requests_never_double_book_and_all_complete():
    workers = [FakeWorker(f"w{i}") for i in range(3)]
    pool = make_pool(*workers)
    running, peak, lock = [0], [0], threading.Lock()

    def task(worker: FakeWorker, request: int):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return worker.work(request, seconds=0.005)
        finally:
            with lock:
                running[0] -= 1

    with ThreadPoolExecutor(max_workers=40) as executor:
        futures = [executor.submit(pool.run, lambda w, i=i: task(w, i)) for i in range(40)]
        results = [future.result(timeout=TIMEOUT) for future in futures]

    assert sorted(request for _, request in results) == list(range(40))
    assert all(worker.max_running == 1 for worker in workers)
    assert peak[0] <= 3
    assert all(worker.served for worker in workers), "every worker should have taken requests"
    status = pool.status()
    assert sum(w.completed for w in status.workers) == 40 and status.queued == 0 and status.busy == 0


def test_queued_requests_start_in_arrival_order():
    worker = FakeWorker("only")
    pool = make_pool(worker)
    worker.gate.clear()
    with ThreadPoolExecutor(max_workers=6) as executor:
        futures = [executor.submit(pool.run, lambda w: w.work(0))]
        wait_until(lambda: pool.status().busy == 1)
        for request in range(1, 6):
            futures.append(executor.submit(pool.run, lambda w, r=request: w.work(r)))
            wait_until(lambda r=request: pool.status().queued == r)
        worker.gate.set()
        for future in futures:
            future.result(timeout=TIMEOUT)
    assert worker.served == [0, 1, 2, 3, 4, 5]


def test_full_queue_rejects_immediately_with_busy_message():
    worker = FakeWorker("only")
    pool = make_pool(worker, max_queue=2)
    worker.gate.clear()
    with ThreadPoolExecutor(max_workers=3) as executor:
        futures = [executor.submit(pool.run, lambda w, r=r: w.work(r)) for r in range(3)]
        wait_until(lambda: pool.status().busy == 1 and pool.status().queued == 2)
        start = time.monotonic()
        with pytest.raises(QueueFullError, match=r"busy.*try again"):
            pool.run(lambda w: w.work(99))
        assert time.monotonic() - start < 1.0
        worker.gate.set()
        assert sorted(f.result(timeout=TIMEOUT)[1] for f in futures) == [0, 1, 2]
    assert 99 not in worker.served


def test_failed_request_is_retried_once_on_another_worker(caplog):
    broken, healthy = FakeWorker("broken", fail=True), FakeWorker("healthy")
    pool = make_pool(broken, healthy)
    with caplog.at_level(logging.INFO, logger="diffsynth_l2p.demo.dispatcher"):
        assert pool.run(lambda w: w.work(7)) == ("healthy", 7)
    by_name = {w.name: w for w in pool.status().workers}
    assert by_name["broken"].failed == 1 and by_name["healthy"].completed == 1
    assert "retrying on healthy after broken failed" in caplog.text


def test_request_failing_on_two_workers_raises_its_error():
    pool = make_pool(FakeWorker("a", fail=True), FakeWorker("b", fail=True))
    with pytest.raises(RuntimeError, match="is broken"):
        pool.run(lambda w: w.work(0))
    assert [w.failed for w in pool.status().workers] == [1, 1]


def test_single_worker_failure_is_not_retried():
    worker = FakeWorker("only", fail=True)
    pool = make_pool(worker)
    with pytest.raises(RuntimeError, match="only is broken"):
        pool.run(lambda w: w.work(0))
    assert pool.status().workers[0].failed == 1


def test_worker_failing_repeatedly_is_taken_out_of_rotation(caplog):
    broken, healthy = FakeWorker("broken", fail=True), FakeWorker("healthy")
    pool = make_pool(broken, healthy, max_failures=2)
    with caplog.at_level(logging.INFO, logger="diffsynth_l2p.demo.dispatcher"):
        results = [pool.run(lambda w, r=r: w.work(r)) for r in range(5)]
    assert results == [("healthy", r) for r in range(5)]
    by_name = {w.name: w for w in pool.status().workers}
    assert by_name["broken"].retired and by_name["broken"].failed == 2
    assert pool.status().active == 1
    assert "worker broken failed 2 requests in a row; taken out of rotation" in caplog.text


def test_success_resets_the_failure_streak():
    worker = FakeWorker("flaky")
    pool = make_pool(worker, max_failures=2)
    for fail in (True, False, True, False):
        worker.fail = fail
        try:
            pool.run(lambda w: w.work(0))
        except RuntimeError:
            pass
    assert not pool.status().workers[0].retired and pool.status().workers[0].failed == 2


def test_no_worker_left_raises_clear_error():
    pool = make_pool(FakeWorker("only", fail=True), max_failures=1)
    with pytest.raises(RuntimeError, match="broken"):
        pool.run(lambda w: w.work(0))
    with pytest.raises(NoWorkerError, match="taken out of rotation.*only"):
        pool.run(lambda w: w.work(1))


def test_shutdown_fails_queued_requests_and_waits_for_running_ones():
    worker = FakeWorker("only")
    pool = make_pool(worker)
    worker.gate.clear()
    with ThreadPoolExecutor(max_workers=2) as executor:
        running = executor.submit(pool.run, lambda w: w.work(0))
        wait_until(lambda: pool.status().busy == 1)
        queued = executor.submit(pool.run, lambda w: w.work(1))
        wait_until(lambda: pool.status().queued == 1)
        assert pool.shutdown(timeout=0.05) is False  # the running request is still blocked
        with pytest.raises(NoWorkerError, match="shutting down"):
            queued.result(timeout=TIMEOUT)
        worker.gate.set()
        assert running.result(timeout=TIMEOUT) == ("only", 0)
    assert pool.shutdown(timeout=TIMEOUT) is True
    with pytest.raises(NoWorkerError, match="shutting down"):
        pool.run(lambda w: w.work(2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"workers": [], "max_queue": 1}, "at least one worker"),
        ({"workers": [1], "max_queue": -1}, "max_queue"),
        ({"workers": [1], "max_queue": 1, "max_consecutive_failures": 0}, "max_consecutive_failures"),
        ({"workers": [1, 2], "max_queue": 1, "names": ["a", "a"]}, "unique"),
        ({"workers": [1], "max_queue": 1, "cooldown_seconds": -1}, "cooldown_seconds"),
    ],
)
def test_invalid_configuration_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Dispatcher(**kwargs)


def test_retries_wait_ahead_of_new_requests():
    broken, gated = FakeWorker("broken", fail=True), FakeWorker("gated")
    pool = make_pool(broken, gated, max_failures=100)
    gated.gate.clear()
    with ThreadPoolExecutor(max_workers=4) as executor:
        first = executor.submit(pool.run, lambda w: w.work(0))  # fails on "broken", then blocks on "gated"
        wait_until(lambda: pool.status().workers[1].busy)
        retries = []
        for request in (1, 2):  # fail on "broken", queue for "gated"
            retries.append(executor.submit(pool.run, lambda w, r=request: w.work(r)))
            wait_until(lambda n=request: pool.status().queued == n)
        broken.fail = False  # "broken" works again and takes the new request at once
        assert pool.run(lambda w: w.work(3)) == ("broken", 3)
        gated.gate.set()
        assert first.result(timeout=TIMEOUT) == ("gated", 0)
        assert [f.result(timeout=TIMEOUT) for f in retries] == [("gated", 1), ("gated", 2)]
    assert gated.served == [0, 1, 2]


def test_bad_requests_never_retire_healthy_workers(caplog):
    first, second = FakeWorker("first"), FakeWorker("second")
    pool = make_pool(first, second, max_failures=2)
    with caplog.at_level(logging.INFO, logger="diffsynth_l2p.demo.dispatcher"):
        for request in range(5):  # each fails on both workers: the request's fault, not theirs
            with pytest.raises(RuntimeError, match=f"bad request {request}"):
                pool.run(lambda w, r=request: w.work(r, error=RuntimeError(f"bad request {r}")))
    status = pool.status()
    assert [(w.retired, w.failed) for w in status.workers] == [(False, 5), (False, 5)]
    assert "taken out of rotation" not in caplog.text
    assert [pool.run(lambda w, r=r: w.work(r)) for r in range(3)] == [("first", 0), ("first", 1), ("first", 2)]


def test_bad_request_readmits_the_worker_its_first_failure_retired(caplog):
    first, second = FakeWorker("first"), FakeWorker("second")
    pool = make_pool(first, second, max_failures=1)
    with caplog.at_level(logging.INFO, logger="diffsynth_l2p.demo.dispatcher"):
        with pytest.raises(RuntimeError, match="bad request"):
            pool.run(lambda w: w.work(0, error=RuntimeError("bad request")))
    assert "worker first failed 1 requests in a row; taken out of rotation" in caplog.text
    assert "worker first back in rotation after request 0 failed on another worker too" in caplog.text
    assert pool.status().active == 2
    assert pool.run(lambda w: w.work(1)) == ("first", 1)


def test_strike_stays_when_the_retry_succeeds_elsewhere():
    broken, healthy = FakeWorker("broken", fail=True), FakeWorker("healthy")
    pool = make_pool(broken, healthy, max_failures=2)
    assert pool.run(lambda w: w.work(0)) == ("healthy", 0)
    with pytest.raises(RuntimeError, match="bad request"):  # a bad request in between takes back only its own strike
        pool.run(lambda w: w.work(1, error=RuntimeError("bad request")))
    assert not pool.status().workers[0].retired
    assert pool.run(lambda w: w.work(2)) == ("healthy", 2)
    assert pool.status().workers[0].retired


@pytest.mark.parametrize("error", [ValueError("height 72"), TypeError("bad type"), torch.OutOfMemoryError("OOM")])
def test_request_errors_never_count_against_even_a_lone_worker(error):
    worker = FakeWorker("only")
    pool = make_pool(worker, max_failures=1, request_errors=REQUEST_ERRORS)
    for request in range(3):
        with pytest.raises(type(error)):
            pool.run(lambda w, r=request: w.work(r, error=error))
    assert not pool.status().workers[0].retired and pool.status().workers[0].failed == 3
    assert pool.run(lambda w: w.work(3)) == ("only", 3)


def test_retired_worker_returns_after_the_cool_down_on_probation(caplog):
    broken, healthy = FakeWorker("broken", fail=True), FakeWorker("healthy")
    pool = make_pool(broken, healthy, max_failures=2, cooldown_seconds=0.3)
    with caplog.at_level(logging.INFO, logger="diffsynth_l2p.demo.dispatcher"):
        assert [pool.run(lambda w, r=r: w.work(r)) for r in range(2)] == [("healthy", 0), ("healthy", 1)]
        retired_at = time.monotonic()
        assert pool.status().workers[0].retired
        wait_until(lambda: not pool.status().workers[0].retired)
        assert time.monotonic() - retired_at >= 0.25
        assert "worker broken back in rotation after a 0.3 s cool-down" in caplog.text
        assert pool.run(lambda w: w.work(2)) == ("healthy", 2)  # tried on "broken" first: one strike retires it again
    by_name = {w.name: w for w in pool.status().workers}
    assert by_name["broken"].retired and by_name["broken"].failed == 3


def test_no_worker_error_says_when_the_first_retired_worker_returns():
    pool = make_pool(FakeWorker("only", fail=True), max_failures=1, cooldown_seconds=60)
    with pytest.raises(RuntimeError, match="only is broken"):
        pool.run(lambda w: w.work(0))
    with pytest.raises(
        NoWorkerError,
        match=r"taken out of rotation after repeated failures: only\); the first one is back in (59|60) s",
    ):
        pool.run(lambda w: w.work(1))
    forever = make_pool(FakeWorker("only", fail=True), max_failures=1, cooldown_seconds=None)
    with pytest.raises(RuntimeError):
        forever.run(lambda w: w.work(0))
    with pytest.raises(NoWorkerError, match=r"failures: only\)\.$"):
        forever.run(lambda w: w.work(1))


def test_worker_readmitted_at_once_is_still_booked_once():
    broken, gated = FakeWorker("broken", fail=True), FakeWorker("gated")
    pool = make_pool(broken, gated, max_failures=1, cooldown_seconds=0)
    broken.gate.clear()
    gated.gate.clear()
    with ThreadPoolExecutor(max_workers=5) as executor:
        futures = [executor.submit(pool.run, lambda w, r=r: w.work(r)) for r in range(5)]
        wait_until(lambda: pool.status().busy == 2 and pool.status().queued == 3)
        broken.gate.set()  # each failure retires "broken" and readmits it at once, with requests waiting
        gated.gate.set()
        assert sorted(f.result(timeout=TIMEOUT) for f in futures) == [("gated", r) for r in range(5)]
    assert broken.max_running == 1 and gated.max_running == 1
