"""The Celery app the asyncio worker tests run under ``celery worker -P custom``:
``async def`` tasks (run as coroutines on the pool's event loops) next to a
few sync ones.

Broker and backend: the Redis at GREENPOOL_TEST_REDIS (db 0 and 1). Tasks
leave marks in db 2 for the tests to wait on: async tasks through
``redis.asyncio`` (one client per event loop, on a bounded pool of
connections), cleanup code (``finally``, ``__aexit__``) and signal handlers
also through the synchronous client, so that a mark is written even if the
loop cannot run the cleanup's own awaits.

Signal handlers RPUSH the signal's name to ``sig:<task id>``; ``on_success``
and ``on_failure`` of :class:`Hooked` RPUSH to ``hooks:<task id>``."""
import asyncio
import json
import os
import threading
import time
import weakref

import redis
import redis.asyncio
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_revoked,
    task_success,
)

URL = os.environ.get("GREENPOOL_TEST_REDIS", "redis://127.0.0.1:6379")

#: The queue of the module's shared worker (per-test workers take their own).
QUEUE = "greenpool-async"

app = Celery("async_app", broker=URL + "/0", backend=URL + "/1")
app.conf.update(
    task_track_started=True,
    result_expires=None,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue=QUEUE,
)

_r = None


def r():
    """The synchronous client of db 2 (thread-safe)."""
    global _r
    if _r is None:
        _r = redis.Redis.from_url(URL + "/2")
    return _r


_aclients = weakref.WeakKeyDictionary()
_alock = threading.Lock()


def ar():
    """The ``redis.asyncio`` client of db 2 for the running event loop (its
    connections belong to one loop; the pool may run several)."""
    loop = asyncio.get_running_loop()
    with _alock:
        client = _aclients.get(loop)
        if client is None:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                URL + "/2", max_connections=32, timeout=None)
            client = _aclients[loop] = redis.asyncio.Redis(connection_pool=pool)
    return client


#: Raises KEYS[1] to ARGV[1] if lower (the peak of a running counter).
PEAK = ("if tonumber(redis.call('get', KEYS[1]) or '0') < tonumber(ARGV[1]) "
        "then redis.call('set', KEYS[1], ARGV[1]) end")


class Boom(Exception):
    """The error of the failing tasks (its type must survive the backend)."""


# ----- signals -----------------------------------------------------------------

#: Tasks whose signals are not recorded (the load tests: thousands of them).
QUIET = {"async_app.gated", "async_app.snooze"}


def _record(name, task, task_id):
    if task_id and getattr(task, "name", None) not in QUIET:
        r().rpush("sig:" + task_id, name)


@task_prerun.connect
def _on_prerun(sender=None, task_id=None, **_):
    _record("task_prerun", sender, task_id)


@task_postrun.connect
def _on_postrun(sender=None, task_id=None, **_):
    _record("task_postrun", sender, task_id)


@task_success.connect
def _on_success(sender=None, **_):
    _record("task_success", sender, sender.request.id)


@task_failure.connect
def _on_failure(sender=None, task_id=None, **_):
    _record("task_failure", sender, task_id)


@task_retry.connect
def _on_retry(sender=None, request=None, **_):
    _record("task_retry", sender, getattr(request, "id", None))


@task_revoked.connect
def _on_revoked(sender=None, request=None, **_):
    _record("task_revoked", sender, getattr(request, "id", None))


# ----- results ------------------------------------------------------------------

@app.task
def add(x, y):
    return x + y


@app.task
async def aadd(x, y):
    await asyncio.sleep(0)
    return x + y


@app.task
def upper(data):
    return data.upper()


@app.task
async def aupper(data):
    await asyncio.sleep(0.01)
    return data.upper()


@app.task
async def call_directly(data):
    """Awaits another async task called directly (``Task.__call__``)."""
    return await aupper(data)


@app.task
async def explode(msg):
    await asyncio.sleep(0)
    raise Boom(msg)


class Hooked(Task):
    def on_success(self, retval, task_id, args, kwargs):
        r().rpush("hooks:" + task_id, f"success:{retval}")

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        r().rpush("hooks:" + task_id, f"failure:{type(exc).__name__}:{exc}")


@app.task(base=Hooked)
async def hooked(x):
    await asyncio.sleep(0)
    if x < 0:
        raise Boom("negative")
    return 2 * x


@app.task(ignore_result=True)
async def ignored(key):
    await ar().set(key + ":ran", 1)
    return "not stored"


@app.task
async def spawn(x):
    """Sends a child task from inside the coroutine; returns its id."""
    await asyncio.sleep(0)
    return aadd.delay(x, 1).id


# ----- the request ------------------------------------------------------------

def _request(req):
    info = {
        name: getattr(req, name, None)
        for name in ("id", "args", "kwargs", "retries", "delivery_info", "hostname",
                     "root_id", "parent_id", "correlation_id", "is_eager",
                     "called_directly")
    }
    return json.loads(json.dumps(info, default=repr))


@app.task(bind=True)
async def request_info(self, *args, **kwargs):
    await asyncio.sleep(0.01)
    return _request(self.request)


@app.task(bind=True)
def request_info_sync(self, *args, **kwargs):
    return _request(self.request)


@app.task(bind=True)
async def request_after_await(self, n):
    """The request before and after awaits that interleave with other tasks
    on the same loop, and the parent a child sent from here sees."""
    before = self.request.id
    await asyncio.sleep(0.01 * (n % 4))
    child = child_report.delay()
    await asyncio.sleep(0.01)
    return {"before": before, "after": self.request.id, "child": child.id}


@app.task(bind=True)
async def child_report(self):
    await asyncio.sleep(0)
    return {"parent_id": self.request.parent_id, "root_id": self.request.root_id}


# ----- retries --------------------------------------------------------------------

@app.task(bind=True)
async def retrying(self, key):
    """Retries with countdown=1, at most twice; records each attempt."""
    await ar().rpush(key + ":attempts", f"{self.request.retries}:{time.time()!r}")
    raise self.retry(countdown=1, max_retries=2)


@app.task(bind=True, autoretry_for=(ValueError,), retry_backoff=1,
          retry_jitter=False, max_retries=5)
async def flaky(self, key):
    """Fails twice with ValueError (retried by autoretry_for with backoff
    1 s, 2 s), then returns the attempt number."""
    c = ar()
    n = await c.incr(key + ":n")
    await c.rpush(key + ":attempts", f"{self.request.retries}:{time.time()!r}")
    if n < 3:
        raise ValueError(f"attempt {n}")
    return n


# ----- holding ------------------------------------------------------------------

@app.task
def hold(key):
    """Counts itself running (peak in key:peak), waits until key:go is set."""
    c = r()
    now = c.incr(key + ":running")
    c.eval(PEAK, 1, key + ":peak", now)
    try:
        while not c.exists(key + ":go"):
            time.sleep(0.01)
    finally:
        c.decr(key + ":running")
    return key


async def _hold(key):
    c = ar()
    now = await c.incr(key + ":running")
    await c.eval(PEAK, 1, key + ":peak", now)
    try:
        while not await c.exists(key + ":go"):
            await asyncio.sleep(0.01)
    finally:
        await c.decr(key + ":running")
    return key


@app.task
async def ahold(key):
    """``hold``, as a coroutine."""
    return await _hold(key)


@app.task(acks_late=True)
async def late_hold(key):
    return await _hold(key)


_gates = weakref.WeakKeyDictionary()


async def _gate(key):
    """Waits until key:go is set. One waiter per loop polls Redis; the
    others wait on an asyncio.Event (thousands of waiters, few commands)."""
    loop = asyncio.get_running_loop()
    with _alock:
        gates = _gates.setdefault(loop, {})
    state = gates.get(key)
    if state is None:
        state = gates[key] = {"event": asyncio.Event(), "polled": False}
    if state["polled"]:
        await state["event"].wait()
        return
    state["polled"] = True
    c = ar()
    while not await c.exists(key + ":go"):
        await asyncio.sleep(0.05)
    state["event"].set()


@app.task
async def gated(key):
    """Counts itself running (peak in key:peak) until key:go is set."""
    c = ar()
    now = await c.incr(key + ":running")
    await c.eval(PEAK, 1, key + ":peak", now)
    try:
        await _gate(key)
    finally:
        await c.decr(key + ":running")
    return 1


@app.task
async def snooze(key, secs):
    await ar().incr(key + ":started")
    await asyncio.sleep(secs)
    return secs


@app.task
async def marked(key):
    await ar().set(key + ":started", 1)
    return key


# ----- kills and limits ------------------------------------------------------------

class Guard:
    """An async context manager that records its exit: key:aexit gets the
    exception type (synchronously), key:aexit-awaited a mark written by an
    await inside __aexit__."""

    def __init__(self, key):
        self.key = key

    async def __aenter__(self):
        await ar().rpush(self.key + ":guard", "enter")
        return self

    async def __aexit__(self, et, ev, tb):
        r().rpush(self.key + ":aexit", et.__name__ if et else "None")
        await ar().rpush(self.key + ":aexit-awaited", "yes")
        return False


async def _guarded(key, secs):
    async with Guard(key):
        try:
            await ar().set(key + ":started", 1)
            await asyncio.sleep(secs)
            return "slept"
        finally:
            r().rpush(key + ":finally", "sync")
            await ar().rpush(key + ":finally", "awaited")


@app.task
async def guarded(key, secs=3600):
    """Sleeps (one await) inside try/finally and an ``async with``."""
    return await _guarded(key, secs)


@app.task(time_limit=0.5)
async def hard_limited(key):
    return await _guarded(key, 30)


@app.task
async def soft_catcher(key):
    """Returns what it caught when SoftTimeLimitExceeded lands at its await."""
    await ar().set(key + ":started", 1)
    try:
        await asyncio.sleep(3600)
    except SoftTimeLimitExceeded:
        return "soft caught"
    return "slept"


@app.task(soft_time_limit=0.5)
async def soft_limited():
    try:
        await asyncio.sleep(30)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "slept"


# ----- a blocked loop ----------------------------------------------------------

def _block_the_loop(secs):
    time.sleep(secs)  # a blocking call inside a coroutine: the loop stalls


@app.task
async def blocker(secs):
    await asyncio.sleep(0)
    _block_the_loop(secs)
    return secs
