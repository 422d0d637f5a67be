"""A real ``celery worker -P custom`` on greenpool.celery:TaskPool, on its
own Redis, driven by a stock Celery client."""
import os
import signal
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from celery.exceptions import TaskRevokedError, TimeLimitExceeded

from conftest import HERE, WAIT, Worker, wait_for

CONCURRENCY = 4


@pytest.fixture(scope="module")
def app(redis_url):
    os.environ["GREENPOOL_TEST_REDIS"] = redis_url
    sys.path.insert(0, HERE)
    import e2e_app

    e2e_app.URL = redis_url
    e2e_app._r = None
    e2e_app.app.conf.broker_url = redis_url + "/0"
    e2e_app.app.conf.result_backend = redis_url + "/1"
    return e2e_app


@pytest.fixture(scope="module")
def worker(app):
    w = Worker(app.app, os.environ["GREENPOOL_TEST_REDIS"], CONCURRENCY, "gp")
    yield w
    code = w.stop()
    assert code == 0, w.output()


def key():
    return "k-" + uuid.uuid4().hex


def test_results(app, worker):
    assert app.add.delay(2, 3).get(timeout=WAIT) == 5
    assert [r.get(timeout=WAIT) for r in [app.add.delay(i, i) for i in range(50)]] == \
        [2 * i for i in range(50)]


def test_failures(app, worker):
    res = app.fail.delay("boom")
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=WAIT)
    assert res.state == "FAILURE"


def test_concurrency_bound(app, worker):
    k = key()
    rs = [app.hold.delay(k) for _ in range(3 * CONCURRENCY)]
    c = app.r()
    try:
        wait_for(lambda: int(c.get(k + ":running") or 0) == CONCURRENCY, "all slots busy")
        assert worker.stats()["running-threads"] == CONCURRENCY
    finally:
        c.set(k + ":go", 1)
    assert [r.get(timeout=WAIT) for r in rs] == [k] * len(rs)
    assert int(c.get(k + ":peak")) == CONCURRENCY


def test_revoke_terminate_of_a_running_task(app, worker):
    k = key()
    res = app.hold.delay(k)
    wait_for(lambda: res.state == "STARTED", "the task to start")
    before = worker.stats()["terminated"]
    res.revoke(terminate=True)
    wait_for(lambda: res.state == "REVOKED", "the task to be revoked")
    with pytest.raises(TaskRevokedError):
        res.get(timeout=WAIT)
    wait_for(lambda: worker.stats()["terminated"] == before + 1, "the kill in stats")
    wait_for(lambda: int(app.r().get(k + ":running") or 0) == 0, "the task to unwind")
    # The slot is free again and the task never reports a result.
    assert app.add.delay(1, 1).get(timeout=WAIT) == 2
    assert res.state == "REVOKED"


def test_pool_grow_and_shrink_seen_in_inspect_stats(app, worker):
    assert worker.stats()["max-concurrency"] == CONCURRENCY
    app.app.control.pool_grow(3, destination=[worker.name], reply=True)
    assert worker.stats()["max-concurrency"] == CONCURRENCY + 3
    app.app.control.pool_shrink(3, destination=[worker.name], reply=True)
    stats = worker.stats()
    assert stats["max-concurrency"] == CONCURRENCY
    assert stats["implementation"] == "greenpool.celery:TaskPool"
    assert {"free-threads", "running-threads", "abandoned-threads"} <= set(stats)


def test_control_time_limit(app, worker):
    """`celery control time_limit` changes the limits of later tasks."""
    reply = app.app.control.time_limit("e2e_app.nap", soft=None, hard=0.5,
                                       destination=[worker.name], reply=True)
    assert reply and "ok" in reply[0][worker.name]
    try:
        with pytest.raises(TimeLimitExceeded):
            app.nap.delay(30).get(timeout=15)
    finally:
        app.app.control.time_limit("e2e_app.nap", soft=None, hard=None,
                                   destination=[worker.name], reply=True)
    assert app.nap.delay(0.01).get(timeout=WAIT) == 0.01


def test_autoscale_grows_the_pool(app, redis_url):
    q = key()
    w = Worker(app.app, redis_url, 1, "auto", extra=["--autoscale=3,1"], queue=q)
    k = key()
    c = app.r()
    try:
        rs = [app.hold.apply_async((k,), queue=q) for _ in range(3)]
        wait_for(lambda: int(c.get(k + ":running") or 0) == 3, "the autoscaler to grow to 3")
        assert w.stats()["max-concurrency"] == 3
        c.set(k + ":go", 1)
        assert [r.get(timeout=WAIT) for r in rs] == [k] * 3
    finally:
        c.set(k + ":go", 1)
        assert w.stop() == 0, w.output()


def test_soft_time_limit(app, worker):
    assert app.soft_limited.delay().get(timeout=WAIT) == "cleaned up"


def test_hard_time_limit_of_a_blocked_task(app, worker):
    # The abandoned thread sleeps past the module's end: one that wakes
    # while the worker's interpreter finalizes aborts it (Python < 3.14).
    res = app.hard_limited.delay(3600)
    with pytest.raises(TimeLimitExceeded):
        # Well before the task's sleep would end.
        res.get(timeout=15)
    assert res.state == "FAILURE"
    assert worker.stats()["abandoned-threads-total"] >= 1
    assert app.add.delay(2, 2).get(timeout=WAIT) == 4


def done_at(res):
    """The result's date_done, in UTC (Celery < 5.4 stores it naive)."""
    d = res.date_done
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def test_countdown_and_eta(app, worker):
    sent = datetime.now(timezone.utc)
    res = app.add.apply_async((1, 2), countdown=1)
    assert res.get(timeout=WAIT) == 3
    assert done_at(res) >= sent + timedelta(seconds=1)
    eta = datetime.now(timezone.utc) + timedelta(seconds=1)
    res = app.add.apply_async((2, 2), eta=eta)
    assert res.get(timeout=WAIT) == 4
    assert done_at(res) >= eta


def test_expires(app, worker):
    res = app.add.apply_async((1, 1), expires=datetime.now(timezone.utc) - timedelta(seconds=5))
    with pytest.raises(TaskRevokedError):
        res.get(timeout=WAIT)
    assert res.state == "REVOKED"


def test_load(app, worker):
    n = int(os.environ.get("GREENPOOL_TEST_LOAD", "5000"))
    from celery import group

    res = group(app.add.s(i, 1) for i in range(n)).apply_async()
    assert res.get(timeout=max(WAIT, n / 20)) == [i + 1 for i in range(n)]


def test_warm_shutdown_loses_nothing(app, redis_url):
    """Running tasks finish; prefetched ones waiting for a slot are not
    started, and their messages go back to the queue for the next worker."""
    q = key()
    w = Worker(app.app, redis_url, 2, "warm", queue=q)
    rs = [app.nap.apply_async((0.3,), queue=q) for _ in range(20)]
    wait_for(lambda: any(r.state == "STARTED" for r in rs), "a task to start")
    assert w.stop(signal.SIGTERM) == 0, w.output()
    assert not all(r.ready() for r in rs)  # some were left for the next worker
    # What was running finished; what was not started went back to the queue.
    w2 = Worker(app.app, redis_url, 2, "warm2", queue=q)
    try:
        assert [r.get(timeout=WAIT) for r in rs] == [0.3] * 20
    finally:
        assert w2.stop() == 0, w2.output()


def test_absurd_time_limits_never_crash_the_worker(app, worker):
    """A message's limits are hostile input. Values that cannot be a
    duration (1e20 s, infinite, NaN, an integer beyond a float) mean no
    limit, as in the core; one that is not a number fails that task with
    the reason. The worker keeps serving throughout."""
    absurd = [(1e20, None), (None, 1e20), (1e300, 1e300), (float("inf"), None),
              (None, float("nan")), (10 ** 400, None), (-5, -5)]
    for hard, soft in absurd:
        res = app.add.apply_async((1, 2), time_limit=hard, soft_time_limit=soft)
        assert res.get(timeout=WAIT) == 3, (hard, soft)
    res = app.add.apply_async((1, 2), time_limit="soon")
    with pytest.raises(ValueError, match="not a number"):
        res.get(timeout=WAIT)
    assert worker.proc.poll() is None, worker.output()
    assert app.add.delay(2, 2).get(timeout=WAIT) == 4
