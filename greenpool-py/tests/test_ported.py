"""Celery's unit tests of the eventlet pool and of BasePool
(t/unit/concurrency/test_eventlet.py, test_concurrency.py), ported as
behaviour against greenpool.celery.TaskPool: the same calls, checked on a
real pool instead of mocks. Where this pool differs on purpose, the test
says so and checks this pool's behaviour."""
import os
import threading
import time

import pytest
from billiard.einfo import ExceptionInfo
from billiard.exceptions import Terminated, WorkerLostError
from celery.exceptions import WorkerShutdown, WorkerTerminate

import greenpool
from greenpool.celery import (
    TaskPool,
    pool_apply,
    pool_postshutdown,
    pool_preshutdown,
    pool_started,
)

from conftest import WAIT, Recorder, wait_for


def blocker():
    """A target that runs until released, in short Python steps (a kill
    lands within one step), and the events to drive it."""
    started, release = threading.Event(), threading.Event()

    def target(*args):
        started.set()
        while not release.is_set():
            time.sleep(0.001)
        return "released"

    return target, started, release


# ----- test_eventlet.py: test_TaskPool ----------------------------------------


def test_pool():
    """on_start, on_apply, on_stop; on_stop of a pool that never started."""
    x = TaskPool(4)
    x.on_start()
    done = Recorder()
    x.on_apply(lambda: 1, callback=done)
    x.on_stop()
    assert done.calls == [(1,)]
    y = TaskPool(4)
    y.on_stop()  # _pool is None: returns, sends both signals


def test_apply_target_order():
    """test_BasePool.test_apply_target: accept callback first (with the job's
    pid and a time), then the target with its args, then the callback with
    the result. The pid is the job's (unique), not os.getpid()."""
    x = TaskPool(4)
    x.start()
    order = []
    lock = threading.Lock()

    def gen(name, retval=None):
        def cb(*args):
            with lock:
                order.append((name, args))
            return retval
        return cb

    handle = x.apply_async(gen("target", 42), args=(8, 16),
                           callback=gen("callback"),
                           accept_callback=gen("accept_callback"))
    assert handle.wait(WAIT)
    names = [n for n, _ in order]
    assert names == ["accept_callback", "target", "callback"]
    pid, when = order[0][1]
    assert pid == handle.pid and pid != os.getpid()
    assert when > 0
    assert order[1][1] == (8, 16)
    assert order[2][1] == (42,)

    # No accept callback
    order.clear()
    assert x.apply_async(gen("target", 42), args=(8, 16),
                         callback=gen("callback")).wait(WAIT)
    assert order == [("target", (8, 16)), ("callback", (42,))]
    x.stop()


def test_grow():
    x = TaskPool(10)
    x.start()
    x.grow(2)
    assert x.limit == 12
    assert x._get_info()["max-concurrency"] == 12
    x.stop()


def test_shrink():
    x = TaskPool(10)
    x.start()
    x.shrink(2)
    assert x.limit == 8
    assert x._get_info()["max-concurrency"] == 8
    x.stop()


def test_shrink_below_zero_raises_and_keeps_limit():
    """Celery's Autoscaler relies on shrink raising ValueError."""
    x = TaskPool(2)
    x.start()
    with pytest.raises(ValueError):
        x.shrink(3)
    assert x.limit == 2
    x.stop()


def test_get_info():
    x = TaskPool(10)
    x.start()
    info = x._get_info()
    assert {k: info[k] for k in ("implementation", "max-concurrency",
                                 "free-threads", "running-threads")} == {
        "implementation": "greenpool.celery:TaskPool",
        "max-concurrency": 10,
        "free-threads": 10,
        "running-threads": 0,
    }
    assert info["abandoned-threads"] == 0
    x.stop()


def test_terminate_job(pool):
    """The eventlet test checks kill() was called on the greenlet; here the
    running job ends, with one callback, and its slot is free again."""
    target, started, _ = blocker()
    out = Recorder()
    h = pool.apply_async(target, callback=out, error_callback=out)
    assert started.wait(WAIT)
    assert pool._get_info()["running-threads"] == 1
    assert pool.terminate_job(h.pid) == "killed"
    (einfo,), = out.calls
    assert isinstance(einfo, ExceptionInfo)
    assert isinstance(einfo.exception.exc, Terminated)
    wait_for(lambda: pool._get_info()["running-threads"] == 0, "the slot to free")


def test_make_killable_target(pool):
    """Eventlet turns a kill into a (False, None, None) *success*; here a
    killed job reports Terminated and nothing else."""
    target, started, release = blocker()
    out = Recorder()
    h = pool.apply_async(target, callback=out)
    assert started.wait(WAIT)
    pool.terminate_job(h.pid, 9)
    release.set()
    wait_for(lambda: pool._get_info()["abandoned-threads"] == 0, "the thread to unwind")
    assert len(out.calls) == 1
    assert isinstance(out.calls[0][0].exception.exc, Terminated)
    assert out.calls[0][0].exception.exc.args == (-9,)


def test_cleanup_after_job_finish(pool):
    """A finished job leaves the job map: its pid is unknown afterwards."""
    h = pool.apply_async(lambda: 1)
    assert h.wait(WAIT)
    wait_for(lambda: pool._get_info()["running-threads"] == 0, "the slot")
    assert pool.terminate_job(h.pid) == "unknown"


# ----- test_eventlet.py: test_Timer (the pool's Timer attribute) --------------


def test_timer_sched_and_clear():
    x = TaskPool.Timer()
    fired = threading.Event()
    x.call_after(0.01, fired.set)
    never = Recorder()
    x.call_after(3600, never)
    assert x.queue
    assert fired.wait(WAIT)
    x.clear()
    assert not x.queue
    x.stop()
    assert never.calls == []


def test_timer_cancel():
    x = TaskPool.Timer()
    ran = Recorder()
    tref = x.call_after(3600, ran)
    assert len(x) == 1
    x.cancel(tref)
    assert tref.canceled and len(x) == 0
    x.cancel(tref)  # twice is harmless
    x.stop()


def test_timer_call_at_args_repeat_and_errors():
    """kombu's API as Celery's worker uses it: call_at with a datetime and
    args, call_repeatedly until cancelled, on_error for an entry that raises."""
    from datetime import datetime, timedelta, timezone

    errors = Recorder()
    x = TaskPool.Timer(on_error=errors)
    got = Recorder()
    x.call_at(datetime.now(timezone.utc) + timedelta(milliseconds=10),
              lambda *a, **kw: got(a, kw), ("a",), {"k": 1})
    assert got.wait() == [(("a",), {"k": 1})]
    ticks = Recorder()
    tref = x.call_repeatedly(0.01, ticks)
    ticks.wait(3)
    tref.cancel()

    def boom():
        raise KeyError("entry")

    x.call_after(0, boom)
    (exc,), = errors.wait()
    assert isinstance(exc, KeyError)
    x.stop()


# ----- test_concurrency.py: test_BasePool --------------------------------------


def test_apply_target__raises(pool):
    """Celery's apply_target re-raises an ordinary exception and loses the
    callback; here the error callback gets it."""
    def target():
        raise KeyError("k")
    out = Recorder()
    pool.apply_async(target, callback=out, error_callback=out)
    (einfo,), = out.wait()
    assert isinstance(einfo.exception.exc, KeyError)


def test_apply_target__raises_without_error_callback(pool):
    def target():
        raise KeyError("k")
    out = Recorder()
    pool.apply_async(target, callback=out)
    (einfo,), = out.wait()
    assert isinstance(einfo.exception.exc, KeyError)


@pytest.mark.parametrize("exc", [WorkerShutdown, WorkerTerminate, BaseException])
def test_apply_target__raises_BaseException(pool, exc):
    """A BaseException is a lost worker (WorkerLostError), as in
    apply_target; WorkerShutdown/WorkerTerminate cannot stop the worker from
    a pool thread, so they are reported the same way."""
    def target():
        raise exc()
    out = Recorder()
    pool.apply_async(target, callback=out)
    (einfo,), = out.wait()
    assert isinstance(einfo.exception.exc, WorkerLostError)


def test_does_not_debug():
    x = TaskPool(10)
    x.start()
    x._does_debug = False
    assert x.apply_async(object).wait(WAIT)
    x.stop()


def test_num_processes():
    assert TaskPool(7).num_processes == 7


def test_interface_info():
    assert TaskPool(10).info == {
        "implementation": "greenpool.celery:TaskPool",
        "max-concurrency": 10,
        "free-threads": 10,
        "running-threads": 0,
    }


def test_interface_flush():
    assert TaskPool(10).flush() is None


def test_active():
    p = TaskPool(10)
    assert not p.active
    p.start()
    assert p.active
    p.stop()
    assert not p.active


def test_restart():
    with pytest.raises(NotImplementedError):
        TaskPool(10).restart()


def test_on_terminate_kills_running_and_queued_jobs():
    """Eventlet's on_terminate does nothing; here every job, running or
    still waiting for a slot, ends with one Terminated report."""
    p = TaskPool(1)
    p.start()
    target, started, _ = blocker()
    out, ran = Recorder(), Recorder()
    p.apply_async(target, callback=out)
    assert started.wait(WAIT)
    for _ in range(3):
        p.apply_async(ran, callback=out)
    p.terminate()
    assert len(out.calls) == 4
    assert all(isinstance(c[0].exception.exc, Terminated) for c in out.calls)
    assert ran.calls == []


def test_interface_terminate_job_unknown_pid(pool):
    """BasePool raises NotImplementedError; here an unknown pid is a no-op."""
    assert pool.terminate_job(101) == "unknown"


def test_interface_did_start_ok():
    assert TaskPool(10).did_start_ok()


def test_interface_register_with_event_loop():
    p = TaskPool(10)
    hub = object()
    assert p.register_with_event_loop(hub) is None
    assert p._hooks.hub is hub


def test_interface_close_refuses_new_jobs():
    p = TaskPool(10)
    p.start()
    p.close()
    assert p._state == p.CLOSE
    with pytest.raises(greenpool.PoolError):
        p.apply_async(lambda: 1)
    p.stop()


def test_flags():
    """The seed's class attributes. is_green is False: tasks run on real
    threads, and Celery's green-only paths (gPidbox spawns on the pool)
    would break."""
    assert TaskPool.signal_safe is False
    assert TaskPool.is_green is False
    assert TaskPool.task_join_will_block is False
    assert TaskPool.Timer is not None


def test_signals():
    """eventlet_pool_started/preshutdown/postshutdown/apply, as greenpool's."""
    seen = []

    def rec(name):
        def receiver(sender=None, **kw):
            seen.append((name, sender, kw.get("args")))
        return receiver

    receivers = [(pool_started, rec("started")), (pool_preshutdown, rec("pre")),
                 (pool_postshutdown, rec("post")), (pool_apply, rec("apply"))]
    for sig, r in receivers:
        sig.connect(r, weak=False)
    try:
        p = TaskPool(2)
        p.start()
        p.apply_async(lambda x: x, args=(7,))
        p.stop()
    finally:
        for sig, r in receivers:
            sig.disconnect(r)
    assert [(n, s is p, a) for n, s, a in seen] == [
        ("started", True, None), ("apply", True, (7,)),
        ("pre", True, None), ("post", True, None)]
