"""Python side of the chord tests: a Celery user's chords, sent by the
stock client to whatever workers serve the broker.

Usage: python chords.py BROKER_URL SCENARIO [ARGS...]
The result backend is the broker (Celery's Redis backend) unless
CHORDS_BACKEND names another Redis. Each scenario
asserts what a Celery user expects and prints OK (`send` prints the body
ids instead).
"""
import json
import os
import sys
import time
import uuid

from celery import Celery, chain, chord, group, signature
from celery.exceptions import ChordError
from celery.result import GroupResult

url, scenario, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
app = Celery("chords", broker=url, backend=os.environ.get("CHORDS_BACKEND", url))
T = 30  # seconds any single result may take
add = signature("greenpool.add", app=app)
echo = signature("greenpool.echo", app=app)
fail = signature("greenpool.fail", app=app)


def forms():
    # the body gets the header's results in header order, then its own args
    r = chord(add.clone((i, i)) for i in range(10))(echo.clone(("tail",)))
    assert r.get(timeout=T) == {"args": [[2 * i for i in range(10)], "tail"], "kwargs": {}}, r.result
    # the chord's keys go once the body is sent; its claim reads "done"
    # (Celery 5.7's marker against late duplicates)
    gid = r.parent.id
    deadline = time.monotonic() + T
    client = app.backend.client
    while client.keys(f"celery-taskset-meta-{gid}.[jstd]"):
        assert time.monotonic() < deadline, "the chord's keys stay"
        time.sleep(0.05)  # polling a condition
    assert client.get(f"celery-taskset-meta-{gid}.c") == b"done"
    # an immutable body ignores them
    r = chord([add.clone((1, 1)), add.clone((2, 2))])(signature("greenpool.echo", ("only",), app=app, immutable=True))
    assert r.get(timeout=T) == {"args": ["only"], "kwargs": {}}, r.result
    # a header of one
    r = chord([add.clone((5, 5))])(echo.clone())
    assert r.get(timeout=T) == {"args": [[10]], "kwargs": {}}, r.result
    # a failed part fails the body with ChordError and calls the body's errback
    eb = echo.clone().set(task_id="eb-" + str(uuid.uuid4()))
    body = echo.clone().set(link_error=[eb])
    r = chord([add.clone((1, 1)), fail.clone(("boom",))], body).apply_async()
    # (the chord's own result raises the part's error first, as Celery's
    # get() re-raises a parent's; the body's result is the ChordError)
    bare = app.AsyncResult(r.id)
    try:
        bare.get(timeout=T)
    except ChordError as e:
        assert "Dependency" in str(e) and "boom" in str(e), e
    else:
        raise AssertionError("no ChordError")
    assert bare.state == "FAILURE", bare.state
    assert app.AsyncResult(eb.id).get(timeout=T) == {"args": [r.id], "kwargs": {}}
    # a thousand parts
    r = chord(add.clone((i, 0)) for i in range(1000))(echo.clone())
    assert r.get(timeout=120) == {"args": [list(range(1000))], "kwargs": {}}
    # canvases as chain steps, applied by the worker that ran the step
    # before: a group at the end, a chord at the end, a group followed by
    # a task (which Celery upgrades to a chord), a chord whose body is a
    # group, a chain in a chain
    r = chain(add.clone((1, 1)), group(add.clone((1,)), add.clone((2,)))).apply_async()
    assert r.get(timeout=T) == [3, 4], r
    r = chain(add.clone((1, 1)), chord([add.clone((1,)), add.clone((2,))], echo.clone())).apply_async()
    assert r.get(timeout=T) == {"args": [[3, 4]], "kwargs": {}}, r.result
    r = chain(add.clone((1, 1)), group(add.clone((1,)), add.clone((2,))), echo.clone()).apply_async()
    assert r.get(timeout=T) == {"args": [[3, 4]], "kwargs": {}}, r.result
    r = chord([add.clone((1, 1)), add.clone((2, 2))], group(echo.clone(("a",)), echo.clone(("b",))))()
    assert r.get(timeout=T) == [{"args": [[2, 4], "a"], "kwargs": {}}, {"args": [[2, 4], "b"], "kwargs": {}}], r
    r = chain(add.clone((1, 1)), chain(add.clone((10,)), add.clone((100,)))).apply_async()
    assert r.get(timeout=T) == 112, r
    # links and link errors that are groups or chains
    e1, e2 = (echo.clone((n,)).set(task_id=f"{n}-" + str(uuid.uuid4())) for n in ("e1", "e2"))
    f = fail.clone(("x",)).set(link_error=group(e1, e2)).apply_async()
    assert app.AsyncResult(e1.id).get(timeout=T) == {"args": [f.id, "e1"], "kwargs": {}}
    assert app.AsyncResult(e2.id).get(timeout=T) == {"args": [f.id, "e2"], "kwargs": {}}
    l1, l2 = (echo.clone((n,)).set(task_id=f"{n}-" + str(uuid.uuid4())) for n in ("l1", "l2"))
    add.clone((1, 2)).set(link=group(l1, l2)).apply_async()
    assert app.AsyncResult(l1.id).get(timeout=T) == {"args": [3, "l1"], "kwargs": {}}
    assert app.AsyncResult(l2.id).get(timeout=T) == {"args": [3, "l2"], "kwargs": {}}
    c2 = add.clone((100,)).set(task_id="c2-" + str(uuid.uuid4()))
    add.clone((1, 2)).set(link=chain(add.clone((10,)), c2)).apply_async()
    assert app.AsyncResult(c2.id).get(timeout=T) == 113
    # a header holding a group: Celery 5.7's client does not save the
    # header's structure here, and the body gets the three results flat, as
    # from a Python worker (their order among equal scores is Celery's)
    r = chord([group(add.clone((1, 1)), add.clone((2, 2))), add.clone((3, 3))], echo.clone())()
    got = r.get(timeout=T)
    assert sorted(got["args"][0]) == [2, 4, 6] and got["kwargs"] == {}, got
    # a chord of chords: each inner body is a part of the outer chord
    inner1 = chord([add.clone((1, 1)), add.clone((2, 2))], echo.clone(("i1",)))
    inner2 = chord([add.clone((3, 3))], echo.clone(("i2",)))
    r = chord([inner1, inner2], echo.clone(("outer",)))()
    assert r.get(timeout=T) == {"args": [[{"args": [[2, 4], "i1"], "kwargs": {}},
                                          {"args": [[6], "i2"], "kwargs": {}}], "outer"],
                                "kwargs": {}}, r.result
    # a chord in a chain, followed by more steps
    r = chain(add.clone((1, 1)), chord([add.clone((1,)), add.clone((2,))], echo.clone()), echo.clone(("end",))).apply_async()
    assert r.get(timeout=T) == {"args": [{"args": [[3, 4]], "kwargs": {}}, "end"], "kwargs": {}}, r.result
    # map, starmap and chunks: Celery's built-in tasks, served here
    from celery import chunks, xmap, xstarmap
    assert xmap(echo, [1, 2], app=app).apply_async().get(timeout=T) == [
        {"args": [1], "kwargs": {}}, {"args": [2], "kwargs": {}}]
    assert xstarmap(add, [(1, 2), (3, 4)], app=app).apply_async().get(timeout=T) == [3, 7]
    r = chunks(add, [(i, i) for i in range(10)], 3, app=app).apply_async()
    assert r.get(timeout=T) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]], r
    acc = signature("celery.accumulate", (1, 2, 3), {"index": 1}, app=app)
    assert acc.apply_async().get(timeout=T) == 2
    assert signature("celery.backend_cleanup", app=app).apply_async().get(timeout=T) is None
    # a canvas sent as one celery.group message is refused with the reason
    try:
        app.send_task("celery.group", (), {"tasks": [], "result": [], "group_id": "g", "partial_args": []}).get(timeout=T)
    except NotImplementedError as e:
        assert "canvas" in str(e), e
    else:
        raise AssertionError("celery.group ran")
    # a group's result saved and restored by the client, over greenpool's results
    g = group(add.clone((i, 1)) for i in range(5)).apply_async()
    g.save()
    back = GroupResult.restore(g.id, app=app)
    assert back.get(timeout=T) == [i + 1 for i in range(5)]


def parts(c, size, secs):
    """The header of chord C: SIZE adds, or SIZE sleeps of SECS when SECS > 0."""
    if float(secs) > 0:
        return [signature("greenpool.sleep", (float(secs),), app=app) for _ in range(int(size))]
    return [add.clone((c, i)) for i in range(int(size))]


def results(c, size, secs):
    if float(secs) > 0:
        return [float(secs)] * int(size)
    return [c + i for i in range(int(size))]


def send(n, size, queue, secs):
    """Sends N chords of SIZE parts whose bodies go to QUEUE; prints the
    body ids."""
    ids = []
    for c in range(int(n)):
        body = echo.clone(("chord", c)).set(queue=queue)
        ids.append(chord(parts(c, size, secs), body).apply_async().id)
    print(json.dumps(ids))


def wait(n, size, secs, ids):
    """Waits for every body of `send` and checks its results."""
    ids = json.loads(ids)
    assert len(ids) == int(n)
    for c, i in enumerate(ids):
        got = app.AsyncResult(i).get(timeout=120)
        want = {"args": [results(c, size, secs), "chord", c], "kwargs": {}}
        assert got == want, (c, got)


{"forms": forms, "send": send, "wait": wait}[scenario](*rest)
if scenario != "send":
    print("OK")
