"""Python side of the interop tests: a Celery user's script, unchanged.

Usage: python interop.py BROKER_URL SCENARIO [ARGS...]
The result backend is the broker unless INTEROP_BACKEND names another
(e.g. rpc://); INTEROP_MAX_PRIORITY sets task_queue_max_priority and
INTEROP_QUORUM=1 declares the celery queue as a quorum queue (AMQP).
Each scenario asserts what a Celery user expects and prints OK; a failed
assertion exits non-zero with the traceback.
"""
import datetime
import json
import os
import sys

from celery import Celery
from celery.exceptions import NotRegistered, TaskRevokedError

url, scenario, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
app = Celery("interop", broker=url, backend=os.environ.get("INTEROP_BACKEND", url))
if os.environ.get("INTEROP_MAX_PRIORITY"):
    app.conf.task_queue_max_priority = int(os.environ["INTEROP_MAX_PRIORITY"])
if os.environ.get("INTEROP_QUORUM") == "1":
    from kombu import Queue
    app.conf.task_queues = [Queue("celery", queue_arguments={"x-queue-type": "quorum"})]
T = 20  # seconds any single result may take


def roundtrip():
    assert app.send_task("greenpool.add", (2, 3)).get(timeout=T) == 5
    assert app.send_task("greenpool.add", (2,), {"y": 0.5}).get(timeout=T) == 2.5
    assert app.send_task("greenpool.add", ("ü", "☃")).get(timeout=T) == "ü☃"
    args = ("héllo wörld ☃ 🚀", {"nested": [1, {"deep": None}], "t": True}, 1.5, None, False, -7, 1e300)
    kwargs = {"käy": [1, 2.25, "x"], "none": None, "obj": {"a": {"b": [True, False]}}}
    out = app.send_task("greenpool.echo", args, kwargs).get(timeout=T)
    assert out == {"args": list(args), "kwargs": kwargs}, out
    assert isinstance(out["args"][2], float) and isinstance(out["args"][5], int)
    assert out["args"][4] is False and out["args"][3] is None
    assert app.send_task("greenpool.echo").get(timeout=T) == {"args": [], "kwargs": {}}
    r = app.send_task("greenpool.add", (1, 1))
    r.get(timeout=T)
    assert r.state == "SUCCESS" and r.successful()


def failure():
    r = app.send_task("greenpool.fail", ("bad thing",))
    try:
        r.get(timeout=T)
    except ValueError as e:
        assert type(e) is ValueError, type(e)
        assert e.args == ("bad thing",), e.args
    else:
        raise AssertionError("no exception")
    assert r.state == "FAILURE"
    assert "ValueError: bad thing" in r.traceback, r.traceback
    try:
        app.send_task("greenpool.add", (1, "x")).get(timeout=T)
    except TypeError as e:
        assert "unsupported operand" in str(e), e
    else:
        raise AssertionError("no TypeError")
    try:
        app.send_task("greenpool.add", (1, 2, 3)).get(timeout=T)
    except TypeError as e:
        assert "positional arguments" in str(e), e
    else:
        raise AssertionError("no TypeError")
    # get(propagate=False) hands back the exception instance
    r = app.send_task("greenpool.fail", ("quiet",))
    exc = r.get(timeout=T, propagate=False)
    assert isinstance(exc, ValueError) and exc.args == ("quiet",)


def unknown():
    try:
        app.send_task("greenpool.no_such_task", (1,)).get(timeout=T)
    except NotRegistered as e:
        assert "greenpool.no_such_task" in str(e)
    else:
        raise AssertionError("no NotRegistered")
    # the worker serves on
    assert app.send_task("greenpool.add", (1, 2)).get(timeout=T) == 3


def countdown():
    sent = datetime.datetime.now(datetime.timezone.utc)
    later = app.send_task("greenpool.add", (10, 1), countdown=2)
    now = app.send_task("greenpool.add", (10, 2))
    assert now.get(timeout=T) == 12
    # the plain task was not held up behind the waiting one
    assert not later.ready(), later.state
    assert later.get(timeout=T) == 11
    eta = sent + datetime.timedelta(seconds=2)
    assert later.date_done >= eta, (later.date_done, eta)


def expires():
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    r = app.send_task("greenpool.add", (1, 2), expires=past)
    try:
        r.get(timeout=T)
    except TaskRevokedError as e:
        assert "expired" in str(e), e
    else:
        raise AssertionError("expired task ran")
    assert r.state == "REVOKED"
    # due at the ETA, expired by then
    r = app.send_task("greenpool.add", (1, 2), countdown=2, expires=1)
    try:
        r.get(timeout=T)
    except TaskRevokedError:
        pass
    else:
        raise AssertionError("expired task ran")
    r = app.send_task("greenpool.add", (1, 2), expires=60)
    assert r.get(timeout=T) == 3


def canvas():
    from celery import chain, signature
    add = signature("greenpool.add", app=app)
    # a chain: ((1 + 2) + 3) + 4
    r = chain(add.clone((1, 2)), add.clone((3,)), add.clone((4,))).apply_async()
    assert r.get(timeout=T) == 10, r
    assert r.parent.get(timeout=T) == 6
    # link: the callback gets the result first
    cb = signature("greenpool.echo", ("tail",), app=app).set(task_id="cb-" + r.id)
    r2 = add.clone((2, 3)).set(link=cb).apply_async()
    assert r2.get(timeout=T) == 5
    assert app.AsyncResult(cb.id).get(timeout=T) == {"args": [5, "tail"], "kwargs": {}}
    # link_error: the errback gets the failed task's id
    eb = signature("greenpool.echo", app=app).set(task_id="eb-" + r.id)
    r3 = signature("greenpool.fail", ("x",), app=app).set(link_error=eb).apply_async()
    try:
        r3.get(timeout=T)
    except ValueError:
        pass
    assert app.AsyncResult(eb.id).get(timeout=T) == {"args": [r3.id], "kwargs": {}}
    # a group: results gathered by the client, group id stored with each
    from celery import group
    g = group(add.clone((i, i)) for i in range(10)).apply_async()
    assert g.get(timeout=T) == [2 * i for i in range(10)]
    assert all(r._get_task_meta().get("group_id") == g.id for r in g.results)


def extended():
    """Against a worker run with --track-started --result-extended."""
    import time
    app.conf.result_extended = True
    r = app.send_task("greenpool.sleep", (1.0,), {})
    deadline = time.monotonic() + T
    while r.state == "PENDING":
        assert time.monotonic() < deadline, "never STARTED"
        time.sleep(0.02)
    assert r.state == "STARTED", r.state
    assert r.info["hostname"].startswith("interop@"), r.info
    assert r.get(timeout=T) == 1.0
    assert r.name == "greenpool.sleep", r.name
    assert r.args == [1.0], r.args
    assert r.kwargs == {}, r.kwargs
    assert r.worker.startswith("interop@"), r.worker
    assert r.queue == "celery", r.queue
    assert r.retries == 0


def send_priorities():
    """Sends 8 low (9) then 8 high (0) priority tasks; prints their ids."""
    low = [app.send_task("greenpool.echo", ("low", i), priority=9).id for i in range(8)]
    high = [app.send_task("greenpool.echo", ("high", i), priority=0).id for i in range(8)]
    print(json.dumps({"low": low, "high": high}))


def send_priorities_amqp():
    """As send_priorities, for AMQP, where a higher number runs first."""
    low = [app.send_task("greenpool.echo", ("low", i), priority=0).id for i in range(8)]
    high = [app.send_task("greenpool.echo", ("high", i), priority=9).id for i in range(8)]
    print(json.dumps({"low": low, "high": high}))


def check_priorities(ids):
    ids = json.loads(ids)
    done = {}
    for kind in ("low", "high"):
        for i in ids[kind]:
            r = app.AsyncResult(i)
            assert r.get(timeout=T)["args"][0] == kind
            done[i] = r.date_done
    last_high = max(done[i] for i in ids["high"])
    first_low = min(done[i] for i in ids["low"])
    assert last_high <= first_low, (last_high, first_low)


def concurrency(k, n, secs):
    k, n, secs = int(k), int(n), float(secs)
    rs = [app.send_task("greenpool.sleep", (secs,)) for _ in range(n)]
    intervals = []
    for r in rs:
        assert r.get(timeout=T + n * secs) == secs
        end = r.date_done.timestamp()
        intervals.append((end - secs, end))
    # count the most intervals alive at one instant (shrunk a little at
    # both ends so back-to-back tasks do not count as overlapping)
    eps = 0.05
    events = sorted([(s + eps, 1) for s, _ in intervals] + [(e - eps, -1) for _, e in intervals])
    alive = peak = 0
    for _, d in events:
        alive += d
        peak = max(peak, alive)
    assert peak == k, f"peak overlap {peak}, expected {k}"
    print("peak", peak)


def own_exchange():
    """A task sent through the client's own direct exchange (queue q2
    bound to ex2 under rk2, declared by kombu): Celery's Task.retry sends
    its retries to ex2 with rk2 again, and kombu routes them to q2."""
    from kombu import Exchange, Queue

    q2 = Queue("q2", Exchange("ex2", type="direct"), routing_key="rk2")
    with app.connection_for_write() as conn:
        q2.bind(conn.default_channel).declare()
    r = app.send_task("greenpool.retry", (2,), exchange="ex2", routing_key="rk2")
    assert r.get(timeout=T) == 2, r.result


def send_many(name, n, args):
    ids = [app.send_task(name, tuple(json.loads(args))).id for _ in range(int(n))]
    print(json.dumps(ids))


def collect(ids, expect):
    for i in json.loads(ids):
        got = app.AsyncResult(i).get(timeout=T)
        assert got == json.loads(expect), (i, got)


{
    "roundtrip": roundtrip,
    "failure": failure,
    "unknown": unknown,
    "countdown": countdown,
    "expires": expires,
    "canvas": canvas,
    "extended": extended,
    "send_priorities": send_priorities,
    "send_priorities_amqp": send_priorities_amqp,
    "check_priorities": check_priorities,
    "concurrency": concurrency,
    "own_exchange": own_exchange,
    "send_many": send_many,
    "collect": collect,
}[scenario](*rest)
if scenario not in ("send_priorities", "send_priorities_amqp", "send_many"):
    print("OK")
