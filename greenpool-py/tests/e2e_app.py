"""The Celery app the worker tests run under ``celery worker -P custom``.

Broker and backend: the Redis at GREENPOOL_TEST_REDIS. Tasks that wait
for the test use Redis keys as handshakes, in short steps, so a kill lands
at once."""
import os
import time

import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

URL = os.environ.get("GREENPOOL_TEST_REDIS", "redis://127.0.0.1:6379")

app = Celery("e2e_app", broker=URL + "/0", backend=URL + "/1")
app.conf.update(
    task_track_started=True,
    result_expires=None,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_r = None


def r():
    global _r
    if _r is None:
        _r = redis.Redis.from_url(URL + "/2")
    return _r


@app.task
def add(x, y):
    return x + y


@app.task
def fail(msg):
    raise ValueError(msg)


@app.task
def hold(key):
    """Counts itself running (peak in key:peak), waits until key:go is set."""
    c = r()
    now = c.incr(key + ":running")
    c.eval("if tonumber(redis.call('get', KEYS[1]) or '0') < tonumber(ARGV[1]) "
           "then redis.call('set', KEYS[1], ARGV[1]) end", 1, key + ":peak", now)
    try:
        while not c.exists(key + ":go"):
            time.sleep(0.01)
    finally:
        c.decr(key + ":running")
    return key


@app.task
def nap(secs):
    time.sleep(secs)
    return secs


@app.task(soft_time_limit=0.5)
def soft_limited():
    try:
        while True:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "cleaned up"


@app.task(time_limit=0.5)
def hard_limited(secs):
    time.sleep(secs)  # a blocking C call: the thread is abandoned
    return "too late"


@app.task
def info():
    return os.getpid()
