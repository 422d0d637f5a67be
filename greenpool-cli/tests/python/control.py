"""Scenarios for tests/celery_control.rs and tests/flower.rs: the stock
Celery tools (CLI, app.control, EventReceiver) and Flower's API against a
greenpool worker (and a Python worker beside it).

Usage: control.py <scenario> <broker url> <args...>; results are read from
the broker URL, or from CONTROL_BACKEND when set. Prints OK and exits 0
when every check holds; an AssertionError (with the observed values)
otherwise. Waits are handshakes on replies or events, with deadlines.
"""
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

from celery import Celery
from celery.utils import uuid
from celery.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded

URL = sys.argv[2]
app = Celery(broker=URL, backend=os.environ.get("CONTROL_BACKEND", URL))
app.conf.result_expires = 3600


def until(what, fn, timeout=30.0, pause=0.05):
    """Polls fn() until it returns something truthy; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(pause)


def one(replies, node):
    """The reply of node in a broadcast's list of {node: reply}."""
    got = [r[node] for r in replies if node in r]
    assert len(got) == 1, f"expected one reply from {node}: {replies}"
    return got[0]


def revoked_error(result):
    try:
        result.get(timeout=20)
    except TaskRevokedError as e:
        return str(e)
    raise AssertionError(f"{result.id} was not revoked: {result.state}")


def terminated(result):
    """Waits until result is stored REVOKED for termination. A Python
    worker stores REVOKED('revoked') first and REVOKED('terminated') just
    after; greenpool stores only the second."""
    revoked_error(result)

    def reason():
        meta = app.backend.get_task_meta(result.id)
        return meta["status"] == "REVOKED" and str(meta["result"]) == "terminated"

    until(f"{result.id} stored as terminated", reason)
    return "terminated"


# ---------------------------------------------------------------- events


class Events:
    """Every event on the broker, captured by a stock EventReceiver."""

    def __init__(self):
        self.items = []
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        with app.connection() as conn:
            recv = app.events.Receiver(conn, handlers={"*": self._on})
            recv.capture(limit=None, timeout=None, wakeup=False)

    def _on(self, ev):
        with self.cond:
            self.items.append(ev)
            self.cond.notify_all()

    def wait(self, what, pred, timeout=30.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hits = [e for e in self.items if pred(e)]
                if hits:
                    return hits
                left = deadline - time.monotonic()
                assert left > 0, f"no event {what}; saw types {[e['type'] for e in self.items]}"
                self.cond.wait(left)

    def of(self, uuid):
        with self.cond:
            return [e for e in self.items if e.get("uuid") == uuid]

    def barrier(self, node):
        """Asks node for a heartbeat and waits for it: every event the node
        sent before is in by then (one ordered event stream per node)."""
        with self.cond:
            seen = len(self.items)
        app.control.heartbeat(destination=[node])
        self.wait(
            "heartbeat barrier",
            lambda e: e["type"] == "worker-heartbeat" and e.get("freq") == 5
            and self.items.index(e) >= seen,
        )


COMMON = {"hostname", "utcoffset", "pid", "clock", "timestamp", "type"}


def check_fields(ev, extra):
    missing = (COMMON | set(extra)) - set(ev)
    assert not missing, f"{ev['type']} lacks {missing}: {ev}"


# ---------------------------------------------------------------- scenarios


def scenario_api(node):
    """app.control / inspect() for every command, and the task events."""
    ev = Events()
    ev.wait("worker-heartbeat", lambda e: e["type"] == "worker-heartbeat")
    hb = ev.wait("worker-heartbeat", lambda e: e["type"] == "worker-heartbeat")[0]
    check_fields(hb, ["freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"])
    insp = app.control.inspect(destination=[node], timeout=2)

    assert app.control.ping(destination=[node], timeout=2) == [{node: {"ok": "pong"}}]
    assert one(app.control.enable_events(destination=[node], reply=True), node) == {"ok": "task events enabled"}
    assert one(app.control.enable_events(destination=[node], reply=True), node) == {"ok": "task events already enabled"}

    # task events: received, started, succeeded, failed
    r = app.send_task("greenpool.add", (2, 3))
    assert r.get(timeout=20) == 5
    f = app.send_task("greenpool.fail", ("boom",))
    try:
        f.get(timeout=20)
        raise AssertionError("fail succeeded")
    except ValueError:
        pass
    ev.barrier(node)
    types = [e["type"] for e in ev.of(r.id)]
    assert types == ["task-received", "task-started", "task-succeeded"], types
    rec, _, suc = ev.of(r.id)
    check_fields(rec, ["uuid", "name", "args", "kwargs", "root_id", "parent_id", "retries", "eta", "expires"])
    assert rec["name"] == "greenpool.add" and rec["args"] == "(2, 3)", rec
    check_fields(suc, ["uuid", "result", "runtime"])
    assert suc["result"] == "5" and isinstance(suc["runtime"], float), suc
    fev = [e for e in ev.of(f.id) if e["type"] == "task-failed"]
    assert len(fev) == 1 and fev[0]["exception"] == "ValueError('boom')", fev
    assert "ValueError" in fev[0]["traceback"], fev

    # terminate a running task: one outcome, one task-revoked, REVOKED stored
    for sig, num in (("SIGKILL", 9), ("SIGTERM", 15), ("SIGUSR1", 10)):
        s = app.send_task("greenpool.sleep", (30,))
        until("active", lambda: [t for t in insp.active()[node] if t["id"] == s.id])
        q = one(app.control.broadcast("query_task", arguments={"ids": [s.id]}, destination=[node], reply=True), node)
        assert q[s.id][0] == "active" and q[s.id][1]["name"] == "greenpool.sleep", q
        reply = app.control.revoke(s.id, terminate=True, signal=sig, destination=[node], reply=True)
        assert one(reply, node) == {"ok": f"terminate: {s.id}"}, reply
        assert revoked_error(s) == "terminated"  # greenpool stores it once
        ev.barrier(node)
        mine = [e["type"] for e in ev.of(s.id)]
        assert mine == ["task-received", "task-started", "task-revoked"], (sig, mine)
        rv = ev.of(s.id)[-1]
        assert rv["terminated"] is True and rv["signum"] == num and rv["expired"] is False, rv
        assert s.id in insp.revoked()[node]
        assert not [t for t in insp.active()[node] if t["id"] == s.id]
    assert one(app.control.terminate("nope", signal="SIGKILL", destination=[node], reply=True), node) == {
        "ok": "terminate: tasks unknown"}

    # a revoked task never runs: REVOKED at once, task-revoked at its ETA
    c = app.send_task("greenpool.add", (1, 1), countdown=2)
    sched = until("scheduled", lambda: insp.scheduled()[node])
    assert sched[0]["priority"] == 6 and sched[0]["request"]["id"] == c.id, sched
    assert sched[0]["request"]["acknowledged"] is False and sched[0]["eta"], sched
    assert insp.reserved()[node] == []
    reply = app.control.revoke(c.id, destination=[node], reply=True)
    assert one(reply, node) == {"ok": f"tasks {{'{c.id}'}} flagged as revoked"}, reply
    assert revoked_error(c) == "revoked"
    rv = ev.wait("task-revoked at the ETA", lambda e: e.get("uuid") == c.id and e["type"] == "task-revoked")[0]
    assert rv["terminated"] is False and rv["expired"] is False, rv
    assert "task-started" not in [e["type"] for e in ev.of(c.id)]
    assert insp.scheduled()[node] == []

    # expired: task-revoked with expired=True, never run
    x = app.send_task("greenpool.add", (1, 1), expires=-1)
    assert revoked_error(x) == "expired"
    rv = ev.wait("expired", lambda e: e.get("uuid") == x.id and e["type"] == "task-revoked")[0]
    assert rv["expired"] is True, rv

    # pool_shrink / pool_grow: limit and prefetch window follow
    st = insp.stats()[node]
    assert set(st) >= {"total", "pid", "clock", "uptime", "pool", "broker", "prefetch_count", "rusage"}, st
    assert isinstance(st["clock"], str) and st["total"].get("greenpool.add", 0) >= 1, st
    c0, p0 = st["pool"]["max-concurrency"], st["prefetch_count"]
    assert p0 == 4 * c0, st
    assert one(app.control.pool_shrink(c0 - 1, destination=[node], reply=True), node) == {"ok": "pool will shrink"}
    st = insp.stats()[node]
    assert st["pool"]["max-concurrency"] == 1 and st["prefetch_count"] == 4, st
    a = app.send_task("greenpool.sleep", (30,))
    b = app.send_task("greenpool.sleep", (30,))
    until("one active", lambda: len(insp.active()[node]) == 1)
    res = until("one reserved", lambda: insp.reserved()[node])
    assert len(res) == 1 and res[0]["id"] in (a.id, b.id), res
    q = one(app.control.broadcast("query_task", arguments={"ids": [res[0]["id"]]}, destination=[node], reply=True), node)
    assert q[res[0]["id"]][0] == "reserved", q
    app.control.revoke([a.id, b.id], terminate=True, signal="SIGKILL", destination=[node], reply=True)
    assert revoked_error(a) in ("terminated", "revoked") and revoked_error(b) in ("terminated", "revoked")
    assert one(app.control.pool_grow(c0 - 1, destination=[node], reply=True), node) == {"ok": "pool will grow"}
    st = insp.stats()[node]
    assert st["pool"]["max-concurrency"] == c0 and st["prefetch_count"] == p0, st

    # the read-only rest
    assert insp.registered()[node] == ["greenpool.add", "greenpool.echo", "greenpool.fail", "greenpool.reject", "greenpool.retry", "greenpool.sleep"]
    aq = insp.active_queues()[node]
    assert [q["name"] for q in aq] == ["celery"] and aq[0]["exchange"]["type"] == "direct", aq
    conf = insp.conf()[node]
    assert conf["broker_url"].endswith(URL.split("@")[-1].split("//")[-1]), conf
    assert isinstance(insp.clock()[node]["clock"], int)
    report = insp.report()[node]["ok"]
    transport = "amqp" if URL.startswith(("amqp", "pyamqp")) else "redis"
    assert "greenpool" in report and f"transport:{transport}" in report, report
    hello = one(app.control.broadcast("hello", arguments={"from_node": "other@x", "revoked": {"abc": time.time()}},
                                      destination=[node], reply=True), node)
    assert "abc" in hello["revoked"] and isinstance(hello["clock"], int), hello
    assert "abc" in insp.revoked()[node]

    # rate limits
    rl = lambda t, r: one(app.control.rate_limit(t, r, destination=[node], reply=True), node)
    assert rl("greenpool.add", "x/s")["error"].startswith("Invalid rate limit string"), rl("greenpool.add", "x/s")
    assert rl("nosuch.task", "1/s") == {"error": "unknown task"}
    assert rl("greenpool.add", "2/s") == {"ok": "new rate limit set successfully"}
    rs = [app.send_task("greenpool.add", (i, i)) for i in range(3)]
    assert [x.get(timeout=20) for x in rs] == [0, 2, 4]
    ev.barrier(node)
    starts = sorted(e["timestamp"] for x in rs for e in ev.of(x.id) if e["type"] == "task-started")
    assert len(starts) == 3 and starts[2] - starts[0] >= 0.9, starts
    assert rl("greenpool.add", "") == {"ok": "rate limit disabled successfully"}

    # time limits for the tasks that start afterwards
    tl = one(app.control.time_limit("greenpool.sleep", soft=0.5, hard=10, destination=[node], reply=True), node)
    assert tl == {"ok": "time limits set successfully"}, tl
    t = app.send_task("greenpool.sleep", (30,))
    try:
        t.get(timeout=20)
        raise AssertionError("soft time limit not applied")
    except SoftTimeLimitExceeded:
        pass
    tl = one(app.control.time_limit("greenpool.sleep", hard=1, destination=[node], reply=True), node)
    assert tl == {"ok": "time limits set successfully"}, tl
    assert one(app.control.time_limit("nosuch.task", hard=1, destination=[node], reply=True), node) == {"error": "unknown task"}
    t = app.send_task("greenpool.sleep", (30,))
    try:
        t.get(timeout=20)
        raise AssertionError("time limit not applied")
    except TimeLimitExceeded:
        pass

    # errors as Celery answers them
    assert one(app.control.autoscale(4, 1, destination=[node], reply=True), node) == {
        "error": "ValueError('Autoscale not enabled')"}
    assert one(app.control.broadcast("nosuchcmd", destination=[node], reply=True), node) == {
        "error": "KeyError('nosuchcmd')"}
    assert one(app.control.broadcast("add_consumer", arguments={}, destination=[node], reply=True), node) == {
        "error": "TypeError(\"add_consumer() missing 1 required positional argument: 'queue'\")"}
    assert one(app.control.add_consumer("foo", destination=[node], reply=True), node) == {"ok": "add consumer foo"}
    assert one(app.control.cancel_consumer("foo", destination=[node], reply=True), node) == {
        "ok": "no longer consuming from foo"}

    # heartbeat on request; events off again
    assert one(app.control.heartbeat(destination=[node], reply=True), node) is None
    assert one(app.control.disable_events(destination=[node], reply=True), node) == {"ok": "task events disabled"}
    quiet = app.send_task("greenpool.add", (0, 0))
    assert quiet.get(timeout=20) == 0
    ev.barrier(node)
    assert ev.of(quiet.id) == [], ev.of(quiet.id)

    # warm shutdown, no reply; worker-offline
    assert app.control.shutdown(destination=[node], reply=True, timeout=1) == []
    ev.wait("worker-offline", lambda e: e["type"] == "worker-offline" and e["hostname"] == node)
    print("OK")


def scenario_autoscale(node):
    insp = app.control.inspect(destination=[node], timeout=2)
    assert insp.stats()[node]["pool"]["max-concurrency"] == 1
    assert one(app.control.pool_grow(2, destination=[node], reply=True), node) == {
        "error": "pool_grow is not supported with autoscale. Adjust autoscale range instead."}
    rs = [app.send_task("greenpool.sleep", (1,)) for _ in range(3)]
    until("autoscale up", lambda: insp.stats()[node]["pool"]["max-concurrency"] == 3)
    assert [r.get(timeout=20) for r in rs] == [1, 1, 1]
    assert one(app.control.autoscale(5, 2, destination=[node], reply=True), node) == {"ok": "autoscale now max=5 min=2"}
    print("OK")


def scenario_mixed(gp, py):
    """A broadcast reaches both workers; destination and pattern only one."""
    nodes = lambda replies: sorted(n for r in replies for n in r)
    assert nodes(app.control.ping(timeout=2)) == sorted([gp, py])
    assert app.control.ping(destination=[gp], timeout=2) == [{gp: {"ok": "pong"}}]
    assert app.control.ping(destination=[py], timeout=2) == [{py: {"ok": "pong"}}]
    pat = app.control.broadcast("ping", pattern=gp.split("@")[0] + "@*", matcher="glob", reply=True, timeout=2)
    assert pat == [{gp: {"ok": "pong"}}], pat
    print("OK")


def scenario_cli(celery, gp, py, gp_queue, py_queue):
    """The exact CLI commands against both workers: the same answers."""

    def run(*args):
        p = subprocess.run([celery, "-b", URL, *args], capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr

    def j(node, *args):
        rc, out, err = run(*args, "-d", node, "-j")
        assert rc == 0, (args, out, err)
        v = json.loads(out)
        return v[node] if isinstance(v, dict) else one(v, node)

    def both(*args):
        return j(gp, *args), j(py, *args)

    # text output too, as an operator sees it
    rc, out, _ = run("inspect", "ping", "-d", gp)
    assert rc == 0 and f"->  {gp}: OK" in out and "pong" in out and "1 node online." in out, out

    a, b = both("inspect", "ping")
    assert a == b == {"ok": "pong"}, (a, b)

    a, b = both("inspect", "stats")
    assert set(a) == set(b), (sorted(a), sorted(b))
    pool4 = {"implementation", "max-concurrency", "free-threads", "running-threads"}
    assert pool4 <= set(a["pool"]) and pool4 <= set(b["pool"]), (a["pool"], b["pool"])
    assert type(a["clock"]) is type(b["clock"]) is str
    assert a["prefetch_count"] == b["prefetch_count"] == 40, (a["prefetch_count"], b["prefetch_count"])
    assert a["pool"]["max-concurrency"] == b["pool"]["max-concurrency"] == 10
    assert {"hostname", "port", "transport", "virtual_host"} <= set(a["broker"]) & set(b["broker"])

    # active: one sleeping task on each worker
    sa = app.send_task("greenpool.sleep", (600,), queue=gp_queue)
    sb = app.send_task("greenpool.sleep", (600,), queue=py_queue)
    ins = {n: app.control.inspect(destination=[n], timeout=2) for n in (gp, py)}
    until("both active", lambda: all((ins[n].active() or {}).get(n) for n in (gp, py)))
    a, b = both("inspect", "active")
    assert set(a[0]) == set(b[0]), (a, b)
    assert (a[0]["id"], b[0]["id"]) == (sa.id, sb.id)
    assert a[0]["args"] == b[0]["args"] == [600] and a[0]["acknowledged"] is b[0]["acknowledged"] is True

    # scheduled: one countdown task on each
    ca = app.send_task("greenpool.add", (1, 2), countdown=60, queue=gp_queue)
    cb = app.send_task("greenpool.add", (1, 2), countdown=60, queue=py_queue)
    until("both scheduled", lambda: all((ins[n].scheduled() or {}).get(n) for n in (gp, py)))
    a, b = both("inspect", "scheduled")
    assert set(a[0]) == set(b[0]) and set(a[0]["request"]) == set(b[0]["request"]), (a, b)
    assert a[0]["priority"] == b[0]["priority"] == 6 and a[0]["request"]["id"] == ca.id
    assert b[0]["request"]["id"] == cb.id

    # pool_grow 5 / pool_shrink 5, and stats follow: 4 x 10 slots, plus
    # one for the request waiting for its ETA, plus or minus 4 x 5
    assert both("control", "pool_grow", "5") == ({"ok": "pool will grow"},) * 2
    stats = lambda: (ins[gp].stats()[gp], ins[py].stats()[py])
    a, b = stats()
    assert (a["pool"]["max-concurrency"], a["prefetch_count"]) == (b["pool"]["max-concurrency"], b["prefetch_count"]) == (15, 61), (a, b)
    assert both("control", "pool_shrink", "5") == ({"ok": "pool will shrink"},) * 2
    a, b = stats()
    assert (a["pool"]["max-concurrency"], a["prefetch_count"]) == (b["pool"]["max-concurrency"], b["prefetch_count"]) == (10, 41), (a, b)

    # `control revoke <id> --terminate --signal SIGKILL` as the issue writes
    # it: the stock CLI refuses the options before any worker is asked, for
    # either worker alike. The CLI's way to say it is `control terminate`.
    for node, s in ((gp, sa), (py, sb)):
        rc, out, err = run("control", "revoke", s.id, "--terminate", "--signal", "SIGKILL", "-d", node)
        assert rc == 2 and "No such option '--terminate'" in err, (rc, out, err)
    a = j(gp, "control", "terminate", "SIGKILL", sa.id)
    b = j(py, "control", "terminate", "SIGKILL", sb.id)
    assert a == {"ok": f"terminate: {sa.id}"} and b == {"ok": f"terminate: {sb.id}"}, (a, b)
    assert terminated(sa) == terminated(sb) == "terminated"
    assert sa.id in ins[gp].revoked()[gp] and sb.id in ins[py].revoked()[py]

    assert both("control", "rate_limit", "greenpool.add", "10/s") == ({"ok": "new rate limit set successfully"},) * 2

    # shutdown: no reply from either, both stop (the caller waits for exits)
    for node in (gp, py):
        rc, out, err = run("control", "shutdown", "-d", node)
        assert rc != 0 and "No nodes replied" in err, (rc, out, err)
    print("OK")


def scenario_flower(node, port):
    base = f"http://127.0.0.1:{port}"

    def get(path):
        with urllib.request.urlopen(base + path, timeout=10) as r:
            return json.loads(r.read())

    def post(path):
        req = urllib.request.Request(base + path, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")

    def flower_up():
        try:
            return get("/api/workers?refresh=1")
        except OSError:
            return None

    workers = until("flower lists the worker", lambda: (flower_up() or {}).get(node) and flower_up())
    w = workers[node]
    assert w["stats"]["pool"]["max-concurrency"] == 4 and "broker" in w["stats"], w
    assert w["registered"] and w["active_queues"][0]["name"] == "celery", w
    assert get("/api/workers?status=1") == {node: True}

    r = app.send_task("greenpool.add", (20, 22))
    assert r.get(timeout=20) == 42
    # Flower applies events as they come: the task shows STARTED first,
    # SUCCESS once the task-succeeded event is in.
    def succeeded():
        t = get("/api/tasks").get(r.id)
        return t if t and t["state"] == "SUCCESS" else None

    tasks = until("flower shows the task succeeded", succeeded)
    assert tasks["name"] == "greenpool.add" and tasks["worker"] == node, tasks

    status, body = post(f"/api/worker/pool/grow/{node}?n=2")
    assert status == 200, body
    insp = app.control.inspect(destination=[node], timeout=2)
    assert insp.stats()[node]["pool"]["max-concurrency"] == 6

    s = app.send_task("greenpool.sleep", (30,))
    until("active", lambda: insp.active()[node])
    status, body = post(f"/api/task/revoke/{s.id}?terminate=true&signal=SIGKILL")
    assert status == 200, body
    assert terminated(s) == "terminated"
    info = until("flower sees the revoke", lambda: get(f"/api/task/info/{s.id}").get("state") == "REVOKED" and get(f"/api/task/info/{s.id}"))
    assert info["state"] == "REVOKED", info

    status, body = post(f"/api/worker/shutdown/{node}")
    assert status == 200, body
    print("OK")


def rejection(result):
    """The Reject a rejected task's get() raises (rebuilt by name)."""
    try:
        result.get(timeout=20)
    except Exception as e:  # celery.exceptions.Reject, rebuilt from the result
        assert type(e).__name__ == "Reject", repr(e)
        return e
    raise AssertionError(f"{result.id} was not rejected: {result.state}")


def scenario_metrics(node):
    """Tasks for tests/worker_metrics.rs: two adds succeed, a fail fails, a
    retry retries once then succeeds, an echo is revoked before it runs,
    a reject (acks late) is rejected without requeue."""
    assert app.send_task("greenpool.add", (2, 3)).get(timeout=20) == 5
    assert app.send_task("greenpool.add", (1, 1)).get(timeout=20) == 2
    try:
        app.send_task("greenpool.fail", ("boom",)).get(timeout=20)
        raise AssertionError("fail succeeded")
    except ValueError:
        pass
    assert app.send_task("greenpool.retry", (1,)).get(timeout=20) == 1
    tid = uuid()
    one(app.control.revoke(tid, destination=[node], reply=True), node)
    assert revoked_error(app.send_task("greenpool.echo", (1,), task_id=tid)) == "revoked"
    rejection(app.send_task("greenpool.reject", (False,)))
    print("OK")


def active_queues(node):
    insp = app.control.inspect(destination=[node], timeout=2)
    return {q["name"]: q for q in insp.active_queues()[node]}


def scenario_consumers(node):
    """add_consumer / cancel_consumer from app.control: replies, active_queues,
    and which queue lists the worker pops. Prints the id of a task left in
    q2 after the cancel (tests/celery_consumers.rs adds q2 again from Rust and
    waits for it with scenario wait_result)."""
    client = app.connection().default_channel.client
    assert list(active_queues(node)) == ["celery"]
    r = app.control.add_consumer("q2", destination=[node], reply=True)
    assert one(r, node) == {"ok": "add consumer q2"}, r
    qs = active_queues(node)
    assert list(qs) == ["celery", "q2"], qs
    assert qs["q2"]["exchange"]["name"] == "q2" and qs["q2"]["routing_key"] == "q2", qs
    assert app.send_task("greenpool.add", (1, 2), queue="q2").get(timeout=20) == 3

    r = app.control.cancel_consumer("q2", destination=[node], reply=True)
    assert one(r, node) == {"ok": "no longer consuming from q2"}, r
    assert list(active_queues(node)) == ["celery"]
    left = app.send_task("greenpool.add", (2, 2), queue="q2")
    # Every fetch reads all consumed queues at once: once a task sent to
    # celery after `left` has run, a fetch after `left` was queued has
    # happened, and it did not take `left`.
    assert app.send_task("greenpool.add", (0, 0)).get(timeout=20) == 0
    assert client.llen("q2") == 1, client.llen("q2")
    assert left.state == "PENDING", left.state

    # Exchange and routing key of add_consumer: bound, then routed there.
    r = app.control.add_consumer("q3", exchange="ex3", exchange_type="direct",
                                 routing_key="rk3", destination=[node], reply=True)
    assert one(r, node) == {"ok": "add consumer q3"}, r
    q3 = active_queues(node)["q3"]
    assert q3["exchange"]["name"] == "ex3" and q3["routing_key"] == "rk3", q3
    until("q3 bound to ex3", lambda: any(
        m.endswith(b"q3") and m.startswith(b"rk3") for m in client.smembers("_kombu.binding.ex3")))
    assert app.send_task("greenpool.add", (3, 3), exchange="ex3", routing_key="rk3").get(timeout=20) == 6
    r = app.control.cancel_consumer("q3", destination=[node], reply=True)
    assert one(r, node) == {"ok": "no longer consuming from q3"}, r
    print(left.id)
    print("OK")


def scenario_wait_result(node, task_id, expected):
    """Waits for task_id's result and checks the worker consumes q2."""
    assert "q2" in active_queues(node)
    got = app.AsyncResult(task_id).get(timeout=20)
    assert got == json.loads(expected), got
    print("OK")


def scenario_rejected(node):
    """task-rejected from a task that raises Reject (acks late), seen by a
    stock EventReceiver, after task-failed as Celery sends them."""
    ev = Events()
    ev.wait("worker-heartbeat", lambda e: e["type"] == "worker-heartbeat")
    j = app.send_task("greenpool.reject", (False,))
    rejection(j)
    hit = ev.wait("task-rejected", lambda e: e["type"] == "task-rejected" and e.get("uuid") == j.id)[0]
    check_fields(hit, ["uuid", "requeue"])
    assert hit["requeue"] is False and hit["hostname"] == node, hit
    ev.barrier(node)
    types = [e["type"] for e in ev.of(j.id)]
    assert types == ["task-received", "task-started", "task-failed", "task-rejected"], types
    failed = ev.of(j.id)[2]
    assert failed["exception"] == "Reject('rejected by request', False)", failed
    meta = app.backend.get_task_meta(j.id)
    assert meta["status"] == "FAILURE", meta

    # With requeue the message goes back to its queue and comes back: no
    # failure, task-rejected(requeue=True) each time. The task rejects for
    # ever (as in Celery), so the queue is cancelled after two rounds.
    k = app.send_task("greenpool.reject", (True,))
    ev.wait("two requeueing rejects", lambda e: e["type"] == "task-rejected" and e.get("uuid") == k.id
            and len([x for x in ev.items if x["type"] == "task-rejected" and x.get("uuid") == k.id]) >= 2)
    one(app.control.cancel_consumer("celery", destination=[node], reply=True), node)
    ev.barrier(node)
    mine = ev.of(k.id)
    assert all(e["requeue"] is True for e in mine if e["type"] == "task-rejected"), mine
    assert "task-failed" not in [e["type"] for e in mine], mine
    received = [e for e in mine if e["type"] == "task-received"]
    assert len(received) >= 2, mine
    assert app.backend.get_task_meta(k.id)["status"] == "PENDING"
    client = app.connection().default_channel.client
    until("the rejected message back in its queue", lambda: client.llen("celery") == 1)
    print("OK")


if __name__ == "__main__":
    globals()["scenario_" + sys.argv[1]](*sys.argv[3:])
