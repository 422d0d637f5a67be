"""Coroutine jobs on the pool itself (no worker, no broker): an ``async
def`` target runs on the pool's event loop, under the same limit as
threads, and kills, the soft limit and the hard limit reach it as
cancellations at its current ``await``.

Handshakes: coroutines under test poll a ``threading.Event`` between short
awaits, so the test thread never sleeps to synchronise."""
import asyncio
import contextvars
import threading

import pytest
from billiard.exceptions import Terminated, TimeLimitExceeded
from celery.exceptions import SoftTimeLimitExceeded

from greenpool.celery import TaskPool, check_celery_version

from conftest import WAIT, Recorder, wait_for


def exc(einfo):
    return einfo.exception.exc


def _uvloop_missing():
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.fixture(params=["asyncio", "uvloop"])
def apool(request, monkeypatch):
    """A started pool of 4 on each kind of loop (uvloop when installed)."""
    if request.param == "uvloop" and _uvloop_missing():
        pytest.skip("uvloop is not installed")
    monkeypatch.setenv("GREENPOOL_LOOP", request.param)
    p = TaskPool(limit=4)
    p.start()
    yield p
    p.terminate()


async def until(event):
    while not event.is_set():
        await asyncio.sleep(0.001)


def holder():
    """An async target that counts itself running until released."""
    lock = threading.Lock()
    state = {"running": 0, "peak": 0}
    release = threading.Event()

    async def target(*_):
        with lock:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
        try:
            await until(release)
        finally:
            with lock:
                state["running"] -= 1
        return "released"

    return target, state, release


def test_coroutines_run_at_once_on_one_loop_and_no_thread():
    p = TaskPool(3000)
    p.start()
    target, state, release = holder()
    out = Recorder()
    hs = [p.apply_async(target, callback=out) for _ in range(2000)]
    wait_for(lambda: state["running"] == 2000, "2,000 coroutines running at once")
    info = p._get_info()
    assert info["coroutines"] == 2000 and info["running-threads"] == 2000
    assert info["threads"] == 0 and info["loops"] == 1
    release.set()
    assert all(h.wait(WAIT) for h in hs)
    assert out.calls == [("released",)] * 2000
    p.stop()


def test_results_failures_and_order_of_callbacks(apool):
    order = []

    async def ok(x, y=0):
        await asyncio.sleep(0)
        order.append("target")
        return x + y

    async def bad():
        await asyncio.sleep(0)
        raise KeyError("k")

    out = Recorder()
    h = apool.apply_async(ok, args=(2,), kwargs={"y": 3}, callback=out,
                         accept_callback=lambda pid, t: order.append("accept"))
    assert h.wait(WAIT) and out.calls == [(5,)]
    assert order == ["accept", "target"]
    errors = Recorder()
    assert apool.apply_async(bad, error_callback=errors).wait(WAIT)
    assert isinstance(exc(errors.calls[0][0]), KeyError)


def test_sync_and_async_jobs_share_one_limit():
    p = TaskPool(4)
    p.start()
    atarget, astate, release = holder()
    sync_running = [0]
    lock = threading.Lock()

    def starget():
        with lock:
            sync_running[0] += 1
        release.wait()
        with lock:
            sync_running[0] -= 1

    hs = [p.apply_async(atarget) for _ in range(6)] + [p.apply_async(starget) for _ in range(6)]
    wait_for(lambda: astate["running"] + sync_running[0] == 4, "four jobs running")
    assert p._get_info()["running-threads"] == 4
    p.grow(2)
    wait_for(lambda: astate["running"] + sync_running[0] == 6, "six after grow(2)")
    release.set()
    assert all(h.wait(WAIT) for h in hs)
    assert astate["peak"] <= 6
    p.stop()


def test_kill_cancels_at_the_await_runs_finally_and_reports_once(apool):
    started, cleaned = threading.Event(), []

    class Resource:
        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc_info):
            cleaned.append("aexit")

    async def target():
        async with Resource():
            try:
                started.set()
                await asyncio.sleep(3600)
            finally:
                cleaned.append("finally")
        return "not killed"

    out = Recorder()
    h = apool.apply_async(target, callback=out, error_callback=out)
    assert started.wait(WAIT)
    assert apool.terminate_job(h.pid, "SIGTERM") == "killed"
    assert exc(out.calls[0][0]).args == (-15,)
    wait_for(lambda: apool._get_info()["coroutines"] == 0, "the coroutine to unwind")
    assert cleaned == ["finally", "aexit"]
    assert len(out.calls) == 1 and isinstance(exc(out.calls[0][0]), Terminated)
    assert apool._get_info()["coroutines-cancelled-total"] == 1
    # The slot is free again.
    assert apool.apply_async(lambda: 1).wait(WAIT)


def test_a_coroutine_that_swallows_its_cancellation_gets_no_second_report(apool):
    started, release = threading.Event(), threading.Event()

    async def stubborn():
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await until(release)
            return "swallowed"

    out = Recorder()
    h = apool.apply_async(stubborn, callback=out, error_callback=out)
    assert started.wait(WAIT)
    apool.terminate_job(h.pid, 9)
    assert apool._get_info()["coroutines-cancelling"] == 1
    wait_for(lambda: apool._get_info()["running-threads"] == 0, "the slot freed")
    release.set()
    wait_for(lambda: apool._get_info()["coroutines-cancelling"] == 0, "the coroutine to end")
    assert len(out.calls) == 1 and isinstance(exc(out.calls[0][0]), Terminated)


def test_sigusr1_and_soft_limit_raise_soft_time_limit_at_the_await(apool):
    started = threading.Event()

    async def soft_aware():
        started.set()
        try:
            await asyncio.sleep(3600)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(0)  # the task may still await while cleaning up
            return "cleaned up"

    out = Recorder()
    h = apool.apply_async(soft_aware, callback=out, error_callback=out)
    assert started.wait(WAIT)
    assert apool.terminate_job(h.pid, 10) == "signalled"
    assert out.wait() == [("cleaned up",)]

    seen, out2 = Recorder(), Recorder()
    started.clear()
    apool.apply_async(soft_aware, callback=out2, soft_timeout=0.05, timeout_callback=seen)
    assert out2.wait() == [("cleaned up",)]
    assert seen.calls == [(True, 0.05)]


def test_hard_limit_cancels_and_reports_time_limit_exceeded():
    p = TaskPool(1)
    p.start()
    cleaned = []

    async def forever():
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append("finally")

    out = Recorder()
    p.apply_async(forever, callback=out, error_callback=out, timeout=0.05)
    (einfo,), = out.wait()
    assert isinstance(exc(einfo), TimeLimitExceeded)
    wait_for(lambda: cleaned == ["finally"], "the coroutine to unwind")
    assert p.apply_async(lambda: "next", callback=out).wait(WAIT)
    assert out.calls[1] == ("next",)
    p.stop()


def test_a_job_killed_before_it_starts_never_starts():
    p = TaskPool(1)
    p.start()
    target, state, release = holder()
    p.apply_async(target)
    wait_for(lambda: state["running"] == 1, "the slot taken")
    ran, out = [], Recorder()

    async def never():
        ran.append(1)

    queued = p.apply_async(never, callback=out, error_callback=out)
    queued.terminate(15)
    assert isinstance(exc(out.calls[0][0]), Terminated)
    release.set()
    p.stop()
    assert ran == [] and len(out.calls) == 1


def test_exactly_one_report_when_kills_race_completions():
    p = TaskPool(16)
    p.start()
    n = 400
    reports = [Recorder() for _ in range(n)]

    async def quick(i):
        await asyncio.sleep(0)
        return i

    handles = [p.apply_async(quick, args=(i,), callback=r, error_callback=r)
               for i, r in enumerate(reports)]
    for h in handles[::2]:
        h.terminate(9)
    for h in handles:
        assert h.wait(WAIT)
    p.stop()
    assert all(len(r.calls) == 1 for r in reports)
    assert p._get_info()["coroutines"] == 0


def test_a_blocking_step_is_detected_and_counted(apool, caplog):
    async def blocks():
        await asyncio.sleep(0)
        threading.Event().wait(0.6)  # a sync call inside async code
        return "done"

    out = Recorder()
    with caplog.at_level("WARNING", logger="greenapool.celery"):
        assert apool.apply_async(blocks, callback=out).wait(WAIT)
    info = apool._get_info()
    assert info["loop-blocks"] == 1
    assert info["loop-blocked-seconds"] >= 0.5
    # The loop's heartbeat that came due during the block runs after it.
    wait_for(lambda: apool._get_info()["loop-lag-p99-ms"] >= 100, "the lag to be measured")
    logged = [r.getMessage() for r in caplog.records if "blocked its event loop" in r.getMessage()]
    assert len(logged) == 1
    assert "in blocks" in logged[0]  # the stack names the blocking function


def test_contextvars_of_the_loop_reach_the_task_and_stay_its_own(apool):
    var = contextvars.ContextVar("var", default="unset")

    async def sets(v):
        var.set(v)
        await asyncio.sleep(0.01)
        return var.get()

    out = Recorder()
    hs = [apool.apply_async(sets, args=(i,), callback=out) for i in range(20)]
    assert all(h.wait(WAIT) for h in hs)
    assert sorted(c[0] for c in out.calls) == list(range(20))


def test_terminate_cancels_running_coroutines():
    p = TaskPool(4)
    p.start()
    cleaned = []
    started = threading.Event()

    async def forever():
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append(1)

    out = Recorder()
    for _ in range(4):
        p.apply_async(forever, callback=out, error_callback=out)
    assert started.wait(WAIT)
    wait_for(lambda: p._get_info()["coroutines"] == 4, "four running")
    p.terminate()
    assert len(out.calls) == 4 and all(isinstance(exc(c[0]), Terminated) for c in out.calls)
    assert cleaned == [1, 1, 1, 1]


def test_stop_lets_running_coroutines_finish():
    p = TaskPool(2)
    p.start()

    async def short():
        await asyncio.sleep(0.05)
        return "finished"

    out = Recorder()
    for _ in range(4):
        p.apply_async(short, callback=out)
    p.stop()
    assert out.calls == [("finished",)] * 4


def test_uvloop_chosen_but_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GREENPOOL_LOOP", "uvloop")
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)
    p = TaskPool(1)
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        p.start()


def test_an_unknown_loop_kind_is_refused(monkeypatch):
    monkeypatch.setenv("GREENPOOL_LOOP", "trio")
    with pytest.raises(ValueError, match="GREENPOOL_LOOP='trio'"):
        TaskPool(1)


def test_celery_outside_the_supported_range_is_refused():
    check_celery_version((5, 3, 0))
    check_celery_version((5, 99, 1))
    for version in ((5, 2, 7), (4, 4, 7), (6, 0, 0)):
        with pytest.raises(RuntimeError, match="supports Celery 5.3 to 5.x"):
            check_celery_version(version)


def test_jobs_spread_over_several_loops(monkeypatch):
    """GREENPOOL_LOOPS=3: jobs go to the loops in turn, each loop's thread
    runs its own, and kills reach a coroutine on any of them."""
    monkeypatch.setenv("GREENPOOL_LOOPS", "3")
    p = TaskPool(30)
    p.start()
    threads, release = set(), threading.Event()

    async def where():
        threads.add(threading.get_ident())
        await until(release)
        return "released"

    out = Recorder()
    hs = [p.apply_async(where, callback=out, error_callback=out) for _ in range(30)]
    wait_for(lambda: p._get_info()["coroutines"] == 30, "30 coroutines running")
    assert p._get_info()["loops"] == 3 and len(threads) == 3
    for h in hs[:3]:
        assert p.terminate_job(h.pid, 9) == "killed"
    release.set()
    assert all(h.wait(WAIT) for h in hs)
    p.stop()
    assert sum(1 for c in out.calls if c == ("released",)) == 27
    killed = [c for c in out.calls if c != ("released",)]
    assert len(killed) == 3 and all(isinstance(exc(c[0]), Terminated) for c in killed)


def test_loops_count_is_checked(monkeypatch):
    monkeypatch.setenv("GREENPOOL_LOOPS", "0")
    with pytest.raises(ValueError, match="GREENPOOL_LOOPS=0"):
        TaskPool(1)
