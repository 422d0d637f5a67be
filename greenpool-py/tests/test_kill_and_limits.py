"""What the eventlet pool gets wrong, done right: kills that stop the task,
time limits, exactly one report per job, unique pids, resize with debt."""
import threading
import time

from billiard.exceptions import Terminated, TimeLimitExceeded
from celery.exceptions import SoftTimeLimitExceeded

from greenpool.celery import JobKilled, TaskPool

from conftest import WAIT, Recorder, wait_for
from test_ported import blocker


def exc(einfo):
    return einfo.exception.exc


def test_kill_raises_in_the_task_and_lets_it_clean_up(pool):
    target_started = threading.Event()
    cleaned = []

    def target():
        target_started.set()
        try:
            while True:
                time.sleep(0.001)
        except JobKilled:
            cleaned.append("finally ran")
            raise

    out = Recorder()
    h = pool.apply_async(target, callback=out, error_callback=out)
    assert target_started.wait(WAIT)
    assert pool.terminate_job(h.pid, "SIGTERM") == "killed"
    assert exc(out.calls[0][0]).args == (-15,)
    wait_for(lambda: cleaned, "the task to unwind")
    wait_for(lambda: pool._get_info()["abandoned-threads"] == 0, "the thread to leave")
    assert len(out.calls) == 1


def test_kill_of_a_thread_blocked_in_c_ends_the_job_at_once(pool):
    """Event.wait blocks in C: the job ends now, the thread is abandoned until
    the call returns, then leaves; the late result is dropped."""
    started, release = threading.Event(), threading.Event()

    def target():
        started.set()
        release.wait()
        return "late"

    out = Recorder()
    h = pool.apply_async(target, callback=out, error_callback=out)
    assert started.wait(WAIT)
    assert pool.terminate_job(h.pid) == "killed"
    info = pool._get_info()
    assert info["abandoned-threads"] == 1 and info["running-threads"] <= 1
    wait_for(lambda: pool._get_info()["running-threads"] == 0, "the slot")
    # The slot serves another job while the old thread is still blocked.
    assert pool.apply_async(lambda: 2, callback=out).wait(WAIT)
    release.set()
    wait_for(lambda: pool._get_info()["abandoned-threads"] == 0, "the thread to leave")
    assert [type(exc(c[0])) if not isinstance(c[0], int) else c[0] for c in out.calls] == [Terminated, 2]


def test_sigusr1_raises_soft_time_limit_in_the_task(pool):
    target, started, _ = blocker()

    def soft_aware():
        try:
            target()
        except SoftTimeLimitExceeded:
            return "cleaned up"

    out = Recorder()
    h = pool.apply_async(soft_aware, callback=out)
    assert started.wait(WAIT)
    assert pool.terminate_job(h.pid, 10) == "signalled"
    assert out.wait() == [("cleaned up",)]


def test_soft_time_limit(pool):
    seen = Recorder()

    def target():
        try:
            while True:
                time.sleep(0.001)
        except SoftTimeLimitExceeded:
            return "cleaned up"

    out = Recorder()
    pool.apply_async(target, callback=out, soft_timeout=0.05, timeout_callback=seen)
    assert out.wait() == [("cleaned up",)]
    assert seen.calls == [(True, 0.05)]


def test_hard_time_limit_frees_the_slot_of_a_blocked_task():
    p = TaskPool(1)
    p.start()
    release = threading.Event()
    out = Recorder()
    p.apply_async(release.wait, callback=out, error_callback=out, timeout=0.05)
    (einfo,), = out.wait()
    assert isinstance(exc(einfo), TimeLimitExceeded)
    # The one slot takes the next job while the first thread is blocked.
    assert p.apply_async(lambda: "next", callback=out).wait(WAIT)
    assert out.calls[1] == ("next",)
    assert p._get_info()["abandoned-threads-total"] == 1
    release.set()
    p.stop()


def test_hard_time_limit_goes_to_the_timeout_callback_when_given():
    """Celery's on_timeout(False, secs) reports the task itself (result,
    events, ack): it is the one report then."""
    p = TaskPool(1)
    p.start()
    timeouts, out = Recorder(), Recorder()
    p.apply_async(lambda: time.sleep(0.5), callback=out, error_callback=out,
                  timeout=0.05, timeout_callback=timeouts)
    assert timeouts.wait() == [(False, 0.05)]
    p.stop()
    assert out.calls == []


def test_terminate_before_start_never_runs_the_target():
    p = TaskPool(1)
    p.start()
    target, started, release = blocker()
    p.apply_async(target)
    assert started.wait(WAIT)
    ran, out, accepted = Recorder(), Recorder(), Recorder()
    queued = p.apply_async(ran, callback=out, error_callback=out, accept_callback=accepted)
    assert queued.pid is None
    queued.terminate(15)
    assert isinstance(exc(out.calls[0][0]), Terminated)
    release.set()
    p.stop()
    assert ran.calls == [] and accepted.calls == [] and len(out.calls) == 1


def test_exactly_one_report_when_kills_race_completions(pool):
    pool.grow(12)
    n = 300
    reports = [Recorder() for _ in range(n)]
    handles = [pool.apply_async(lambda i=i: i, callback=r, error_callback=r)
               for i, r in enumerate(reports)]
    for h in handles[::2]:
        h.terminate(9)
    for r in reports:
        r.wait()
    for h in handles:
        assert h.wait(WAIT)
    pool.stop()
    assert all(len(r.calls) == 1 for r in reports)


def test_pids_are_unique_and_never_reused(pool):
    pids = []
    for _ in range(200):
        h = pool.apply_async(lambda: None)
        assert h.wait(WAIT)
        pids.append(h.pid)
    assert len(set(pids)) == len(pids)


def test_concurrency_is_bounded_by_the_limit():
    p = TaskPool(3)
    p.start()
    lock = threading.Lock()
    running, peak = [0], [0]
    release = threading.Event()

    def target():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait()
        with lock:
            running[0] -= 1

    hs = [p.apply_async(target) for _ in range(10)]
    wait_for(lambda: running[0] == 3, "three running")
    assert p._get_info()["running-threads"] == 3
    release.set()
    for h in hs:
        assert h.wait(WAIT)
    p.stop()
    assert peak[0] == 3


def test_shrink_below_running_leaves_a_debt_and_grow_starts_waiters():
    p = TaskPool(2)
    p.start()
    t1, s1, r1 = blocker()
    t2, s2, r2 = blocker()
    p.apply_async(t1)
    p.apply_async(t2)
    assert s1.wait(WAIT) and s2.wait(WAIT)
    p.shrink(2)
    info = p._get_info()
    assert info["max-concurrency"] == 0 and info["free-threads"] == -2
    t3, s3, r3 = blocker()
    p.apply_async(t3)
    r1.set()
    r2.set()
    wait_for(lambda: p._get_info()["running-threads"] == 0, "the first two to end")
    assert not s3.is_set()  # the limit is 0: the third waits
    p.grow(1)
    assert s3.wait(WAIT)
    r3.set()
    p.stop()


def test_idle_threads_leave():
    import os

    os.environ["GREENPOOL_THREAD_IDLE_TIMEOUT"] = "0.05"
    try:
        p = TaskPool(4)
    finally:
        del os.environ["GREENPOOL_THREAD_IDLE_TIMEOUT"]
    p.start()
    hs = [p.apply_async(time.sleep, args=(0.01,)) for _ in range(4)]
    for h in hs:
        assert h.wait(WAIT)
    assert p._get_info()["threads-started"] <= 4
    wait_for(lambda: p._get_info()["threads"] == 0, "idle threads to leave")
    assert p.apply_async(lambda: 1).wait(WAIT)
    p.stop()


def test_sigusr1_twice_reaches_the_task_once(pool):
    """Celery's Request.terminate calls terminate_job(pid, sig) and then the
    apply handle's terminate(sig): the task must get one exception, not a
    second one in the middle of its cleanup."""
    target, started, _ = blocker()
    cleaning = threading.Event()

    def soft_aware():
        try:
            target()
        except SoftTimeLimitExceeded:
            cleaning.set()
            for _ in range(50):
                time.sleep(0.002)
            return "cleaned up"

    out = Recorder()
    h = pool.apply_async(soft_aware, callback=out, error_callback=out)
    assert started.wait(WAIT)
    assert pool.terminate_job(h.pid, 10) == "signalled"
    assert cleaning.wait(WAIT)
    h.terminate(10)
    assert out.wait() == [("cleaned up",)]


def test_pool_level_time_limits_apply_to_tasks_without_their_own():
    """Celery passes task_soft_time_limit / task_time_limit to the pool as
    soft_timeout / timeout options."""
    p = TaskPool(2, soft_timeout=0.05)
    p.start()

    def target():
        try:
            while True:
                time.sleep(0.001)
        except SoftTimeLimitExceeded:
            return "soft"

    out = Recorder()
    p.apply_async(target, callback=out)
    assert out.wait() == [("soft",)]
    p.stop()


def test_stop_in_a_worker_leaves_queued_jobs_unstarted():
    """With an app (inside a worker), warm shutdown waits for the running job
    only: the queued ones never start and get no report."""
    from celery import Celery

    p = TaskPool(1, app=Celery(set_as_current=False))
    p.start()
    target, started, release = blocker()
    first = Recorder()
    p.apply_async(target, callback=first)
    assert started.wait(WAIT)
    ran, out = Recorder(), Recorder()
    queued = [p.apply_async(ran, callback=out, accept_callback=out) for _ in range(3)]

    def release_once_closed():
        wait_for(lambda: p._get_info()["state"] != "run", "stop to close the pool")
        release.set()

    threading.Thread(target=release_once_closed).start()
    p.stop()
    assert first.calls == [("released",)]
    assert ran.calls == [] and out.calls == []
    assert all(q.ready() for q in queued)


def test_seconds_that_cannot_be_durations_never_panic(pool):
    """Limits and timeouts too large, infinite or NaN go through one checked
    helper: no limit (or wait for ever), never a panic in the pool."""
    out = Recorder()
    for limit in (1e20, float("inf"), float("nan"), 1e300, -1.0):
        h = pool.apply_async(lambda: "ok", callback=out, timeout=limit, soft_timeout=limit)
        assert h.wait(float("inf"))
        assert h.wait(1e300) and h.wait(float("nan")) and h.wait(-1)
    assert out.calls == [("ok",)] * 5
