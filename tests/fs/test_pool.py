"""The bounded pool keeps its two promises: a full pool makes submit wait, and the first
failure is kept and raised again."""

from __future__ import annotations

import threading

import pytest

from cachetree.fs.pool import BoundedPool

WAIT = 30.0


@pytest.mark.parametrize(("workers", "limit", "expected"), [(1, 3, 3), (2, None, 4)])
def test_submit_waits_while_limit_tasks_are_queued_or_running(workers, limit, expected):
    tasks = 8
    pool = BoundedPool(workers, "test-pool", limit=limit)
    permits = threading.Semaphore(0)  # each lets one task finish
    changed = threading.Condition()
    submitted = finished = 0
    in_pool_after_submit: list[int] = []

    def task() -> None:
        nonlocal finished
        assert permits.acquire(timeout=WAIT)
        with changed:
            finished += 1
            changed.notify_all()

    def release_when_full() -> None:
        # Let one task finish each time the pool is full (or everything was submitted).
        for _ in range(tasks):
            with changed:
                assert changed.wait_for(
                    lambda: submitted - finished == expected or submitted == tasks, WAIT
                )
                permits.release()
                changed.wait_for(lambda done=finished: finished > done, WAIT)

    releaser = threading.Thread(target=release_when_full)
    releaser.start()
    for _ in range(tasks):
        pool.submit(task)
        with changed:
            submitted += 1
            in_pool_after_submit.append(submitted - finished)
            changed.notify_all()
    releaser.join(WAIT)
    pool.wait_idle()
    pool.shutdown()

    assert finished == tasks
    # full (limit defaults to 2 * workers), and never more than full
    assert max(in_pool_after_submit) == expected
    assert in_pool_after_submit[:expected] == list(range(1, expected + 1))


def test_the_first_failure_is_kept_and_raised_again():
    pool = BoundedPool(1, "test-pool")
    first, second = ValueError("first"), ValueError("second")

    def fail(exc: BaseException) -> None:
        raise exc

    ran: list[int] = []
    pool.submit(fail, first)
    pool.submit(fail, second)
    pool.submit(ran.append, 1)  # later tasks still run
    pool.wait_idle()
    with pytest.raises(ValueError) as once:
        pool.raise_error()
    with pytest.raises(ValueError) as twice:
        pool.raise_error()
    pool.shutdown()
    assert once.value is twice.value is first
    assert ran == [1]
