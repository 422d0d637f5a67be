"""The Celery app of bench/python/worker_pools.py: one app, run by
``celery worker`` under each pool. Broker and backend: the Redis at
GREENPOOL_BENCH_REDIS. Tasks count themselves in Redis so the driver
can watch a queue drain without a result per task.

The ``async def`` tasks are for pools that run coroutines (greenpool's
pool, celery-aio-pool); each has a plain-``def`` twin for the others."""
import asyncio
import os
import time
import weakref

import redis
import redis.asyncio
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

URL = os.environ.get("GREENPOOL_BENCH_REDIS", "redis://127.0.0.1:6379")

app = Celery("worker_pools_app", broker=URL + "/0", backend=URL + "/1")
app.conf.update(
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)

_r = None


def r():
    global _r
    if _r is None:
        # One connection per concurrent task at most (1000 greenlets share
        # this client under eventlet and gevent).
        _r = redis.Redis.from_url(URL + "/2", max_connections=100000)
    return _r


#: The payload that the round-trip tasks GET (the driver stores it).
PAYLOAD_KEY = "payload"

_ar = weakref.WeakKeyDictionary()


def ar():
    """The ``redis.asyncio`` client of the running event loop, made on its
    first use in that loop: an asyncio connection belongs to the loop that
    opened it, so a pool that runs several loops needs a client for each.
    Like ``r()``, one connection per concurrent task at most (the asyncio
    pool's default of 100 fails the 101st task that waits on Redis)."""
    loop = asyncio.get_running_loop()
    client = _ar.get(loop)
    if client is None:
        client = _ar[loop] = redis.asyncio.Redis.from_url(URL + "/2", max_connections=100000)
    return client


@app.task(ignore_result=True)
def trivial():
    r().incr("done")


@app.task(ignore_result=True)
async def async_trivial():
    await ar().incr("done")


@app.task(ignore_result=True)
def sleeper(secs):
    time.sleep(secs)
    r().incr("done")


@app.task(ignore_result=True)
async def async_sleeper(secs):
    await asyncio.sleep(secs)
    await ar().incr("done")


@app.task(ignore_result=True)
def round_trip():
    """One GET of the payload, then the count."""
    r().get(PAYLOAD_KEY)
    r().incr("done")


@app.task(ignore_result=True)
async def async_round_trip():
    """One GET of the payload through ``redis.asyncio``, then the count."""
    await ar().get(PAYLOAD_KEY)
    await ar().incr("done")


@app.task
def blocked(secs):
    """Runs until killed: a blocking sleep, then a mark that it was not."""
    time.sleep(secs)
    r().set("blocked-finished", 1)
    return "not killed"


@app.task(soft_time_limit=1)
def soft_limited():
    try:
        for _ in range(500):
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "soft limit raised"
    return "ran to the end"


@app.task(time_limit=1)
def hard_limited():
    time.sleep(6)
    return "ran to the end"


@app.task
def ping():
    return "pong"
