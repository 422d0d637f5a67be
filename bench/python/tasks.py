"""Python twin of greenpool's built-in tasks, for `celery worker -P eventlet`.

Run: GREENPOOL_BROKER_URL=redis://... celery -A tasks worker -P eventlet -c 1000
(from this folder). The bench and the interop tests start it this way.
"""
import json
import os
import time

from celery import Celery

broker = os.environ.get("GREENPOOL_BROKER_URL", "redis://127.0.0.1:6379/0")
backend = os.environ.get("GREENPOOL_RESULT_BACKEND", broker)
app = Celery("greenpool_twin", broker=broker, backend=backend)
# Celery's transport options as JSON (a sentinel:// broker's master_name,
# say), and late acks, as the failover tests run it.
for setting, var in (
    ("broker_transport_options", "GREENPOOL_BROKER_TRANSPORT_OPTIONS"),
    ("result_backend_transport_options", "GREENPOOL_RESULT_BACKEND_TRANSPORT_OPTIONS"),
):
    if os.environ.get(var):
        app.conf[setting] = json.loads(os.environ[var])
if os.environ.get("GREENPOOL_ACKS_LATE") == "1":
    app.conf.task_acks_late = True


def _sleep(secs):
    # eventlet patches time.sleep when the worker runs with -P eventlet.
    time.sleep(secs)


@app.task(name="greenpool.add")
def add(x, y):
    return x + y


@app.task(name="greenpool.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="greenpool.sleep")
def sleep(secs):
    _sleep(secs)
    return secs


@app.task(name="greenpool.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="greenpool.retry", bind=True, max_retries=None)
def retry(self, times):
    if self.request.retries < times:
        raise self.retry(countdown=0)
    return self.request.retries


@app.task(name="greenpool.reject", acks_late=True)
def reject(requeue):
    from celery.exceptions import Reject

    raise Reject("rejected by request", requeue)
