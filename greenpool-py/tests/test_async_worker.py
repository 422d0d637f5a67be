"""``async def`` Celery tasks on a real ``celery worker -P custom`` running
greenpool.celery:TaskPool (coroutines on the pool's asyncio event loops), on
their own Redis, driven by a stock Celery client. The app is async_app.py.

Also ported as behaviour (our own code) from the test suites of two
third-party asyncio pools:

* celery-aio-pool (the-wondersmith/celery-aio-pool, tests/conftest.py and
  tests/test_celery_pool_asyncio.py): sync and async tasks in one app, each
  via ``.delay()`` and ``.apply_async(kwargs=...)``; a bound sync and a bound
  async task see a populated request (id, root_id and correlation_id are
  UUIDs, hostname a string, delivery_info a dict); an async task called
  directly from sync code (run on a new event loop) and from async code
  (awaited).
* celery-pool-asyncio (kai3341/celery-pool-asyncio,
  tests/test_celery_pool_asyncio.py and its README): an async task with a
  positional argument sent with ``.delay()`` returns within 10 s;
  ``soft_time_limit`` raises SoftTimeLimitExceeded inside the coroutine and
  ``time_limit`` breaks the coroutine's execution (README example).
"""
import asyncio
import os
import re
import signal
import sys
import time
import uuid

import pytest
from celery import chain, group
from celery.exceptions import MaxRetriesExceededError, TaskRevokedError, TimeLimitExceeded
from celery.result import AsyncResult

import conftest
from conftest import HERE, WAIT, wait_for

CONCURRENCY = 4
#: Tasks of the "many sleepers" and of the warm shutdown tests.
MANY = int(os.environ.get("GREENPOOL_TEST_ASYNC_MANY", "2000"))
SHUTDOWN_LOAD = int(os.environ.get("GREENPOOL_TEST_ASYNC_SHUTDOWN", "5000"))


class Worker(conftest.Worker):
    """A worker on async_app (see conftest.Worker), with a way to send to
    its queue and to list what it holds."""

    def __init__(self, app, url, concurrency, name, queue, extra=()):
        super().__init__(app, url, concurrency, name, extra=extra, queue=queue,
                         module="async_app")

    def received(self):
        """Ids of the tasks the worker holds (running or waiting)."""
        i = self.inspect()
        ids = set()
        for reply in (i.active() or {}, i.reserved() or {}):
            ids.update(t["id"] for t in reply.get(self.name, []))
        return ids

    def send(self, task, *args, **options):
        return task.apply_async(args, queue=self.queue, **options)


@pytest.fixture(scope="module")
def app(redis_url):
    os.environ["GREENPOOL_TEST_REDIS"] = redis_url
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import async_app

    async_app.URL = redis_url
    async_app._r = None
    async_app.app.conf.broker_url = redis_url + "/0"
    async_app.app.conf.result_backend = redis_url + "/1"
    return async_app


def new_worker(app, concurrency, name, extra=()):
    return Worker(app.app, os.environ["GREENPOOL_TEST_REDIS"], concurrency, name,
                  queue=f"{name}-{uuid.uuid4().hex[:8]}", extra=extra)


@pytest.fixture(scope="module")
def worker(app):
    """The shared worker, on the app's default queue."""
    w = Worker(app.app, os.environ["GREENPOOL_TEST_REDIS"], CONCURRENCY, "aio",
               queue=app.QUEUE)
    yield w
    code = w.stop()
    assert code == 0, w.output()


@pytest.fixture(scope="module")
def solo(app):
    """A worker at -c 1, for the kills (the next task needs the freed slot)."""
    w = new_worker(app, 1, "aio-solo")
    yield w
    code = w.stop()
    assert code == 0, w.output()


def key():
    return "k-" + uuid.uuid4().hex


def meta(app, task_id):
    """The stored result, read afresh (AsyncResult caches ready states)."""
    return app.app.backend.get_task_meta(task_id, cache=False)


def state(app, task_id):
    return meta(app, task_id)["status"]


def wait_state(app, task_id, want, timeout=WAIT):
    """Waits for the stored state ``want``; fails with what is stored."""
    deadline = time.monotonic() + timeout
    while state(app, task_id) != want:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {task_id} to be {want}: stored "
                        f"{meta(app, task_id)}, signals {signals_of(app, task_id)}")
        time.sleep(0.01)


def signals_of(app, task_id):
    return [s.decode() for s in app.r().lrange("sig:" + task_id, 0, -1)]


def marks(app, name):
    return [m.decode() for m in app.r().lrange(name, 0, -1)]


def running(app, k):
    return int(app.r().get(k + ":running") or 0)


def attempt_times(app, k):
    """(retries, time) of each recorded attempt."""
    out = []
    for m in marks(app, k + ":attempts"):
        retries, at = m.split(":", 1)
        out.append((int(retries), float(at)))
    return out


# ----- 1. results, and the concurrency bound shared with sync tasks -------------

def test_async_results_with_and_without_bind(app, worker):
    assert app.aadd.delay(2, 3).get(timeout=WAIT) == 5
    rs = [app.aadd.delay(i, i) for i in range(50)]
    assert [r.get(timeout=WAIT) for r in rs] == [2 * i for i in range(50)]
    res = app.request_info.delay()
    assert res.get(timeout=WAIT)["id"] == res.id


def test_sync_tasks_keep_working_next_to_async_ones(app, worker):
    rs = [(app.add if i % 2 else app.aadd).delay(i, 1) for i in range(40)]
    assert [r.get(timeout=WAIT) for r in rs] == [i + 1 for i in range(40)]


def test_sync_and_async_tasks_share_the_concurrency_limit(app, worker):
    """N sync and N async holders at -c N: exactly N run at once."""
    k = key()
    c = app.r()
    rs = []
    try:
        rs = [app.hold.delay(k) for _ in range(CONCURRENCY)] + \
             [app.ahold.delay(k) for _ in range(CONCURRENCY)]
        wait_for(lambda: running(app, k) == CONCURRENCY, "all slots busy")
        ids = {r.id for r in rs}
        wait_for(lambda: ids <= worker.received(), "the worker to hold all tasks")
        assert running(app, k) == CONCURRENCY
    finally:
        c.set(k + ":go", 1)
    assert [r.get(timeout=WAIT) for r in rs] == [k] * len(rs)
    assert int(c.get(k + ":peak")) == CONCURRENCY


# ----- 2. Celery semantics ----------------------------------------------------------

def test_signals_prerun_success_postrun(app, worker):
    res = app.aadd.delay(1, 2)
    assert res.get(timeout=WAIT) == 3
    wait_for(lambda: "task_postrun" in signals_of(app, res.id), "task_postrun")
    assert signals_of(app, res.id) == ["task_prerun", "task_success", "task_postrun"]


def test_signal_failure(app, worker):
    res = app.explode.delay("signalled")
    with pytest.raises(app.Boom):
        res.get(timeout=WAIT)
    wait_for(lambda: "task_postrun" in signals_of(app, res.id), "task_postrun")
    assert signals_of(app, res.id) == ["task_prerun", "task_failure", "task_postrun"]


def test_bound_request(app, worker):
    res = app.request_info.apply_async((1, "two"), {"k": "v"})
    req = res.get(timeout=WAIT)
    assert req["id"] == res.id
    assert req["args"] == [1, "two"]
    assert req["kwargs"] == {"k": "v"}
    assert req["retries"] == 0
    assert req["hostname"] == worker.name
    assert isinstance(req["delivery_info"], dict)
    assert req["delivery_info"]["routing_key"] == app.QUEUE
    assert req["root_id"] == res.id and req["parent_id"] is None
    assert req["is_eager"] is False and req["called_directly"] is False


def test_request_is_per_coroutine_across_awaits(app, worker):
    """Tasks interleaving on a loop each see their own request after an
    await, and a child sent after an await names the right parent."""
    rs = [app.request_after_await.delay(i) for i in range(16)]
    for r in rs:
        out = r.get(timeout=WAIT)
        assert out["before"] == r.id and out["after"] == r.id
        child = AsyncResult(out["child"], app=app.app).get(timeout=WAIT)
        assert child == {"parent_id": r.id, "root_id": r.id}


def test_retry_with_countdown_then_max_retries_exceeded(app, worker):
    k = key()
    res = app.retrying.delay(k)
    with pytest.raises(MaxRetriesExceededError):
        res.get(timeout=WAIT)
    assert res.state == "FAILURE"
    attempts = attempt_times(app, k)
    assert [n for n, _ in attempts] == [0, 1, 2]
    # countdown=1 respected: each retry ran at least 1 s after the attempt
    # that asked for it.
    for (_, a), (_, b) in zip(attempts, attempts[1:]):
        assert b - a >= 0.95, attempts


def test_signal_retry(app, worker):
    k = key()
    res = app.retrying.delay(k)
    with pytest.raises(MaxRetriesExceededError):
        res.get(timeout=WAIT)
    wait_for(lambda: signals_of(app, res.id).count("task_postrun") == 3, "3 runs")
    sigs = signals_of(app, res.id)
    assert sigs.count("task_retry") == 2
    assert sigs.count("task_prerun") == 3
    assert sigs.count("task_failure") == 1
    assert "task_success" not in sigs


def test_autoretry_for_with_backoff(app, worker):
    k = key()
    res = app.flaky.delay(k)
    assert res.get(timeout=WAIT) == 3
    attempts = attempt_times(app, k)
    assert [n for n, _ in attempts] == [0, 1, 2]
    # retry_backoff=1, no jitter: countdowns of 1 s, then 2 s.
    assert attempts[1][1] - attempts[0][1] >= 0.95, attempts
    assert attempts[2][1] - attempts[1][1] >= 1.95, attempts
    # task_success is sent after the result is stored: the client may read
    # the result first.
    wait_for(lambda: "task_success" in signals_of(app, res.id), "the task_success signal")
    sigs = signals_of(app, res.id)
    assert sigs.count("task_retry") == 2 and sigs.count("task_success") == 1


def test_ignore_result(app, worker):
    k = key()
    res = app.ignored.delay(k)
    wait_for(lambda: app.r().exists(k + ":ran"), "the task to run")
    # task_postrun is sent after the result would have been stored.
    wait_for(lambda: "task_postrun" in signals_of(app, res.id), "task_postrun")
    assert "task_success" in signals_of(app, res.id)
    assert state(app, res.id) == "PENDING"
    backend = app.app.backend
    assert not backend.client.exists(backend.get_key_for_task(res.id))


def _unacked(app, task_id):
    """Whether the broker still holds the task's message as unacknowledged
    (kombu's Redis transport keeps delivered messages in the "unacked" hash
    until they are acked)."""
    import redis

    broker = redis.Redis.from_url(os.environ["GREENPOOL_TEST_REDIS"] + "/0")
    return any(task_id.encode() in v for v in broker.hvals("unacked"))


def test_acks_late(app, worker):
    """An acks_late async task's message is acked after it ran; an ordinary
    one's when it starts."""
    k_late, k_early = key(), key()
    late = app.late_hold.delay(k_late)
    early = app.ahold.delay(k_early)
    try:
        wait_for(lambda: running(app, k_late) == 1 and running(app, k_early) == 1,
                 "both tasks to start")
        wait_for(lambda: not _unacked(app, early.id), "the early ack")
        assert _unacked(app, late.id)
    finally:
        app.r().set(k_late + ":go", 1)
        app.r().set(k_early + ":go", 1)
    assert late.get(timeout=WAIT) == k_late
    wait_for(lambda: not _unacked(app, late.id), "the late ack")


def test_failure_result_and_traceback(app, worker):
    res = app.explode.delay("boom")
    with pytest.raises(app.Boom, match="boom"):
        res.get(timeout=WAIT)
    assert res.state == "FAILURE"
    assert "explode" in res.traceback  # the task's own frame
    assert "Boom" in res.traceback


def test_on_success_and_on_failure_of_a_custom_base(app, worker):
    ok = app.hooked.delay(21)
    assert ok.get(timeout=WAIT) == 42
    wait_for(lambda: marks(app, "hooks:" + ok.id), "on_success")
    assert marks(app, "hooks:" + ok.id) == ["success:42"]
    bad = app.hooked.delay(-1)
    with pytest.raises(app.Boom):
        bad.get(timeout=WAIT)
    wait_for(lambda: marks(app, "hooks:" + bad.id), "on_failure")
    assert marks(app, "hooks:" + bad.id) == ["failure:Boom:negative"]


def test_chains(app, worker):
    assert (app.aadd.s(1, 2) | app.aadd.s(10)).apply_async().get(timeout=WAIT) == 13
    mixed = chain(app.aadd.s(1, 2), app.add.s(3), app.aadd.s(4))
    assert mixed.apply_async().get(timeout=WAIT) == 10


def test_link(app, worker):
    tid = uuid.uuid4().hex
    res = app.aadd.apply_async((1, 2), link=app.aadd.s(10).set(task_id=tid))
    assert res.get(timeout=WAIT) == 3
    assert AsyncResult(tid, app=app.app).get(timeout=WAIT) == 13


def test_delay_from_inside_an_async_task(app, worker):
    res = app.spawn.delay(41)
    child_id = res.get(timeout=WAIT)
    assert AsyncResult(child_id, app=app.app).get(timeout=WAIT) == 42
    assert [c.id for c in res.children or []] == [child_id]


# ----- 2b. ported from celery-aio-pool and celery-pool-asyncio ------------------------

MESSAGE = "Hello World!"


@pytest.mark.parametrize("task", ["upper", "aupper"])
def test_ported_delay_and_apply_async_kwargs(app, worker, task):
    """celery-aio-pool: sync and async tasks in one app, sent with .delay()
    and .apply_async(kwargs=...); celery-pool-asyncio: .delay() with a
    positional argument returns within 10 s."""
    t = getattr(app, task)
    assert t.delay(MESSAGE).get(timeout=10) == MESSAGE.upper()
    assert t.delay(data=MESSAGE).get(timeout=WAIT) == MESSAGE.upper()
    assert t.apply_async(kwargs={"data": MESSAGE}).get(timeout=WAIT) == MESSAGE.upper()


@pytest.mark.parametrize("task", ["request_info_sync", "request_info"])
def test_ported_bound_request_is_populated(app, worker, task):
    """celery-aio-pool: with bind=True, sync and async tasks see id,
    root_id and correlation_id as UUIDs, hostname a string and
    delivery_info a dict."""
    req = getattr(app, task).delay().get(timeout=WAIT)
    for name in ("id", "root_id", "correlation_id"):
        uuid.UUID(req[name])
    assert isinstance(req["hostname"], str) and req["hostname"]
    assert isinstance(req["delivery_info"], dict) and req["delivery_info"]


def test_ported_called_directly_from_sync_and_async_code(app):
    """celery-aio-pool: an async task called directly returns a coroutine,
    run on a new event loop or awaited, with greenpool.celery imported."""
    import greenpool.celery  # noqa: F401

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(app.aupper(data=MESSAGE)) == MESSAGE.upper()
    finally:
        loop.close()

    async def main():
        return await app.aupper(data=MESSAGE)

    assert asyncio.run(main()) == MESSAGE.upper()


def test_ported_called_directly_from_async_code_in_the_worker(app, worker):
    """celery-aio-pool: a task awaited from async code, here inside a task
    run by the pool."""
    assert app.call_directly.delay(MESSAGE).get(timeout=WAIT) == MESSAGE.upper()


# ----- 3. kills and limits ------------------------------------------------------------

@pytest.mark.parametrize("sig", [None, "SIGKILL"])
def test_revoke_terminate_of_a_running_async_task(app, solo, sig):
    """REVOKED, reported once, finally and __aexit__ ran, slot free."""
    k = key()
    res = solo.send(app.guarded, k)
    wait_for(lambda: app.r().exists(k + ":started"), "the task to start")
    if sig is None:
        res.revoke(terminate=True)
    else:
        res.revoke(terminate=True, signal=sig)
    wait_state(app, res.id, "REVOKED")
    with pytest.raises(TaskRevokedError):
        res.get(timeout=WAIT)
    wait_for(lambda: "sync" in marks(app, k + ":finally"), "its finally block")
    wait_for(lambda: marks(app, k + ":aexit"), "its __aexit__")
    # The one slot serves the next task.
    assert solo.send(app.aadd, 1, 1).get(timeout=WAIT) == 2
    assert state(app, res.id) == "REVOKED"
    # task_revoked is sent after REVOKED is stored.
    wait_for(lambda: "task_revoked" in signals_of(app, res.id), "the task_revoked signal")
    sigs = signals_of(app, res.id)
    assert sigs.count("task_revoked") == 1, sigs
    assert "task_success" not in sigs and "task_failure" not in sigs, sigs
    # Cleanup that awaits (closing connections, say) could run too.
    wait_for(lambda: marks(app, k + ":finally") == ["sync", "awaited"],
             "the await in its finally block")
    wait_for(lambda: marks(app, k + ":aexit-awaited") == ["yes"],
             "the await in its __aexit__")


def test_revoke_terminate_sigusr1_is_a_soft_limit(app, solo):
    k = key()
    res = solo.send(app.soft_catcher, k)
    wait_for(lambda: app.r().exists(k + ":started"), "the task to start")
    res.revoke(terminate=True, signal="SIGUSR1")
    # Celery announces any terminate as a revoke first; the task's own
    # result then replaces it.
    wait_state(app, res.id, "SUCCESS")
    assert meta(app, res.id)["result"] == "soft caught"
    assert solo.send(app.aadd, 2, 2).get(timeout=WAIT) == 4


def test_soft_time_limit(app, solo):
    """Also celery-pool-asyncio's README: soft_time_limit raises
    SoftTimeLimitExceeded inside the coroutine."""
    assert solo.send(app.soft_limited).get(timeout=WAIT) == "cleaned up"


def test_hard_time_limit(app, solo):
    """Also celery-pool-asyncio's README: time_limit breaks the coroutine."""
    k = key()
    res = solo.send(app.hard_limited, k)
    with pytest.raises(TimeLimitExceeded):
        # Far sooner than the task's own 30 s sleep would end.
        res.get(timeout=15)
    assert res.state == "FAILURE"
    wait_for(lambda: "sync" in marks(app, k + ":finally"), "its finally block")
    wait_for(lambda: marks(app, k + ":aexit"), "its __aexit__")
    assert solo.send(app.aadd, 3, 3).get(timeout=WAIT) == 6


def test_revoke_of_a_task_waiting_for_a_slot(app, solo):
    """At -c 1 behind a holder: revoked (no terminate) before a slot frees,
    it never starts and is REVOKED."""
    k_hold, k = key(), key()
    holder = solo.send(app.ahold, k_hold)
    try:
        wait_for(lambda: running(app, k_hold) == 1, "the holder to start")
        res = solo.send(app.marked, k)
        wait_for(lambda: res.id in solo.received(), "the worker to hold the task")
        app.app.control.revoke(res.id, destination=[solo.name], reply=True)
    finally:
        app.r().set(k_hold + ":go", 1)
    assert holder.get(timeout=WAIT) == k_hold
    wait_state(app, res.id, "REVOKED")
    # The slot went to the next task; the revoked one never started.
    k2 = key()
    assert solo.send(app.marked, k2).get(timeout=WAIT) == k2
    assert not app.r().exists(k + ":started")
    assert state(app, res.id) == "REVOKED"
    assert signals_of(app, res.id).count("task_revoked") == 1


# ----- 4. a blocked loop -------------------------------------------------------------

def _records(log):
    """The log's records: a header line `[date: LEVEL/process] ...` and its
    continuation lines."""
    records = []
    for line in log.splitlines():
        if re.match(r"\[\d{4}-\d\d-\d\d", line) or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    return records


def test_a_blocked_loop_is_logged_and_counted(app, worker):
    res = app.blocker.delay(1.5)
    assert res.get(timeout=WAIT) == 1.5

    def warnings():
        return [rec for rec in _records(worker.output())
                if res.id in rec and re.match(r"\[[^\]]*WARNING/", rec)]

    wait_for(warnings, "the warning of the blocked loop")
    found = warnings()
    assert len(found) == 1, found
    assert "async_app.blocker" in found[0], found[0]
    assert "_block_the_loop" in found[0], found[0]
    stats = worker.stats()
    assert stats["loop-blocks"] >= 1, stats
    assert isinstance(stats["loop-blocked-seconds"], float), stats
    assert stats["loop-blocked-seconds"] > 0, stats
    assert isinstance(stats["loop-lag-p99-ms"], float), stats


# ----- 6. resize ----------------------------------------------------------------------

def test_pool_grow_and_shrink_move_the_async_limit(app, worker):
    grow = 2
    c = app.r()
    k = key()
    rs = []
    try:
        rs = [app.ahold.delay(k) for _ in range(CONCURRENCY + grow)]
        wait_for(lambda: running(app, k) == CONCURRENCY, "all slots busy")
        app.app.control.pool_grow(grow, destination=[worker.name], reply=True)
        wait_for(lambda: running(app, k) == CONCURRENCY + grow, "the grown slots busy")
    finally:
        c.set(k + ":go", 1)
        app.app.control.pool_shrink(grow, destination=[worker.name], reply=True)
    assert [r.get(timeout=WAIT) for r in rs] == [k] * len(rs)
    assert worker.stats()["max-concurrency"] == CONCURRENCY
    k = key()
    try:
        rs = [app.ahold.delay(k) for _ in range(CONCURRENCY + grow)]
        wait_for(lambda: running(app, k) == CONCURRENCY, "all slots busy")
        ids = {r.id for r in rs}
        wait_for(lambda: ids <= worker.received(), "the worker to hold all tasks")
    finally:
        c.set(k + ":go", 1)
    assert [r.get(timeout=WAIT) for r in rs] == [k] * len(rs)
    assert int(c.get(k + ":peak")) == CONCURRENCY


# ----- 5. many coroutines, few threads; shutdowns ----------------------------------------

def test_many_sleeping_coroutines_on_few_threads(app):
    """MANY tasks waiting at once (until released, so the test does not
    depend on how fast the worker takes messages in) at -c 3000 run on few
    threads and at most 4 loops."""
    w = new_worker(app, 3000, "aio-many")
    k = key()
    c = app.r()
    try:
        res = group(app.gated.s(k) for _ in range(MANY)).apply_async(queue=w.queue)
        wait_for(lambda: int(c.get(k + ":peak") or 0) == MANY, f"{MANY} running at once",
                 timeout=max(WAIT, MANY / 20))
        stats = w.stats()
        assert stats["threads"] < 10, stats
        assert stats["loops"] <= 4, stats
        c.set(k + ":go", 1)
        assert res.get(timeout=max(WAIT, MANY / 20)) == [1] * MANY
    finally:
        c.set(k + ":go", 1)
        code = w.stop()
    assert code == 0, w.output()


def test_warm_shutdown_loses_nothing(app, redis_url):
    """SIGTERM with thousands of sleeping coroutines running or waiting:
    exit 0; a second worker on the queue finishes the rest."""
    k = key()
    w = new_worker(app, 1000, "aio-warm")
    res = group(app.snooze.s(k, 1.0) for _ in range(SHUTDOWN_LOAD)) \
        .apply_async(queue=w.queue)
    wait_for(lambda: int(app.r().get(k + ":started") or 0) >= 50, "tasks to start")
    assert w.stop(signal.SIGTERM) == 0, w.output()
    # Some were left for the next worker (else this tests nothing).
    assert int(app.r().get(k + ":started")) < SHUTDOWN_LOAD
    w2 = Worker(app.app, redis_url, 1000, "aio-warm2", queue=w.queue)
    try:
        assert res.get(timeout=max(WAIT, SHUTDOWN_LOAD / 20)) == [1.0] * SHUTDOWN_LOAD
    finally:
        assert w2.stop() == 0, w2.output()


def test_cold_shutdown_runs_finally_blocks(app):
    w = new_worker(app, CONCURRENCY, "aio-cold")
    ks = [key() for _ in range(3)]
    try:
        for k in ks:
            w.send(app.guarded, k)
        wait_for(lambda: all(app.r().exists(k + ":started") for k in ks),
                 "the tasks to start")
    finally:
        code = w.stop(signal.SIGQUIT)
    # Cold shutdown exits with EX_FAILURE (1); no crash, no abort.
    assert code in (0, 1), w.output()
    for k in ks:
        assert "sync" in marks(app, k + ":finally"), w.output()
        assert marks(app, k + ":aexit"), w.output()
