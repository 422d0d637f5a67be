"""Python side of tests/transport_options.rs: a Celery user's app whose
broker_transport_options change the keys (a global_keyprefix, priority
steps) or the queue order, as a deployment sets them.

Usage: python transport_options.py BROKER_URL OPTIONS_JSON SCENARIO [ARGS...]
Each checking scenario asserts what a Celery user expects and prints OK; a
failed assertion exits non-zero with the traceback.
"""
import json
import sys

from celery import Celery

url, options, scenario, rest = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4:]
app = Celery("transport_options", broker=url, backend=url)
app.conf.broker_transport_options = options
T = 20  # seconds any single result may take


def send_priorities():
    """Sends 4 low (9) then 4 high (0) priority tasks; prints their ids."""
    low = [app.send_task("greenpool.echo", ("low", i), priority=9).id for i in range(4)]
    high = [app.send_task("greenpool.echo", ("high", i), priority=0).id for i in range(4)]
    print(json.dumps({"low": low, "high": high}))


def send_queues():
    """Sends 5 tasks to each of queues first and second, interleaved
    (second's first); prints their ids."""
    ids = {"first": [], "second": []}
    for i in range(5):
        for q in ("second", "first"):
            ids[q].append(app.send_task("greenpool.echo", (q, i), queue=q).id)
    print(json.dumps(ids))


def ran_before(ids, before, after):
    """Every task of `before` finished no later than any of `after`."""
    ids = json.loads(ids)
    done = {}
    for kind in (before, after):
        for i in ids[kind]:
            r = app.AsyncResult(i)
            assert r.get(timeout=T)["args"][0] == kind
            done[i] = r.date_done
    last = max(done[i] for i in ids[before])
    first = min(done[i] for i in ids[after])
    assert last <= first, (last, first)


def check_priorities(ids):
    ran_before(ids, "high", "low")


def check_queue_order(ids):
    ran_before(ids, "first", "second")


def ping(node):
    replies = app.control.inspect(timeout=2).ping() or {}
    assert replies.get(node) == {"ok": "pong"}, replies


{
    "send_priorities": send_priorities,
    "send_queues": send_queues,
    "check_priorities": check_priorities,
    "check_queue_order": check_queue_order,
    "ping": ping,
}[scenario](*rest)
if not scenario.startswith("send_"):
    print("OK")
