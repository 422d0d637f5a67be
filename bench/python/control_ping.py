"""Control round trip: `inspect ping` latency from the stock Python client,
against `greenpool worker` and `celery worker -P eventlet` in the same run.

Usage (from this folder, with a redis-server running):

    python control_ping.py redis://127.0.0.1:6379/0 ../../target/release/greenpool [N]

Starts both workers on the broker (the Python one with tasks.py from this
folder), sends N (default 1000) `app.control.ping(destination=[node])` to
each in turn (one at a time, so each call returns on the node's reply),
and prints p50/p90/p99/max in milliseconds. Both workers are stopped at
the end.
"""
import os
import statistics
import subprocess
import sys
import time

from celery import Celery

URL, GREENPOOL = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
HERE = os.path.dirname(os.path.abspath(__file__))

app = Celery(broker=URL)


def start(cmd, **kw):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def wait_ping(node):
    deadline = time.monotonic() + 60
    while not app.control.ping(destination=[node], timeout=0.5):
        assert time.monotonic() < deadline, f"{node} never answered"


def measure(node):
    out = []
    for _ in range(N):
        t0 = time.perf_counter()
        r = app.control.ping(destination=[node], timeout=1)
        out.append((time.perf_counter() - t0) * 1000)
        assert r == [{node: {"ok": "pong"}}], r
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    gp_node, py_node = "gp@bench", "py@bench"
    procs = [
        start([GREENPOOL, "worker", "-b", URL, "-c", "10", "-n", gp_node, "-l", "warning"]),
        start([sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "eventlet", "-c", "10",
               "-n", py_node, "-l", "warning", "-Q", "pingbench"],
              cwd=HERE, env={**os.environ, "GREENPOOL_BROKER_URL": URL}),
    ]
    try:
        for node in (gp_node, py_node):
            wait_ping(node)
        rows = []
        for name, node in (("greenpool worker", gp_node), ("celery -P eventlet", py_node)):
            measure(node)  # warm-up round, not reported
            xs = measure(node)
            rows.append((name, pct(xs, 50), pct(xs, 90), pct(xs, 99), max(xs), statistics.mean(xs)))
        print(f"inspect ping round trip from app.control.ping(destination=[node]), {N} pings each")
        print(f"{'worker':<20} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
        for r in rows:
            print(f"{r[0]:<20} {r[1]:8.2f} {r[2]:8.2f} {r[3]:8.2f} {r[4]:8.2f} {r[5]:8.2f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
