#!/usr/bin/env python3
"""One Celery app under four worker pools, measured in one run:
``-P custom`` (greenpool.celery:TaskPool), ``-P eventlet``, ``-P gevent``
and ``-P threads``.

Workloads (each on a fresh worker, queue preloaded, then opened with
``add_consumer`` so that start-up is not timed):

* trivial:  20,000 trivial tasks drained at -c 100 (tasks/s);
* sleepers: 10,000 tasks that sleep 1 s at -c 1000 (wall time, worker
  peak RSS);
* revoke:   ``revoke(terminate=True)`` of a task blocked in ``time.sleep``,
  at -c 1: time until the slot runs the next task (the kill's latency);
* features: terminate, soft limit, hard limit, resize, each measured.

Usage (a venv with celery[redis], eventlet, gevent and greenpool installed;
redis-server on PATH)::

    python bench/python/worker_pools.py            # full sizes, about 5 minutes
    python bench/python/worker_pools.py --quick    # a tenth of the sizes
    python bench/python/worker_pools.py --pools custom,threads --json out.json

Prints progress to stderr and a Markdown table to stdout.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
POOLS = ("custom", "eventlet", "gevent", "threads")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(pred, timeout, step=0.02):
    """Polls ``pred`` until true; returns the time taken, or None on timeout."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(step)
    return time.monotonic() - t0


class Worker:
    def __init__(self, mod, url, pool, concurrency, queue):
        env = dict(os.environ, GREENPOOL_BENCH_REDIS=url,
                   PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        args = ["-P", pool]
        if pool == "custom":
            env["CELERY_CUSTOM_WORKER_POOL"] = "greenpool.celery:TaskPool"
        self.name = f"{pool}-{uuid.uuid4().hex[:6]}@bench"
        self.logf = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{pool}-", suffix=".log",
                                                delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker_pools_app", "worker", *args,
             "-c", str(concurrency), "-n", self.name, "-Q", queue, "--loglevel=WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env, cwd=HERE, stdout=self.logf, stderr=subprocess.STDOUT)
        self.app = mod.app
        if until(lambda: self.proc.poll() is not None
                 or bool(self.app.control.ping([self.name], timeout=0.3)), 60) is None \
                or self.proc.poll() is not None:
            raise RuntimeError(f"worker {pool} did not start; log: {self.logf.name}")

    def consume(self, queue):
        self.app.control.add_consumer(queue, destination=[self.name], reply=True)

    def rss(self):
        """(current, peak) resident set size in MiB."""
        vals = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    vals[k] = int(v.split()[0]) / 1024
        return vals.get("VmRSS"), vals.get("VmHWM")

    def stats(self):
        rep = self.app.control.inspect([self.name], timeout=3).stats() or {}
        return rep.get(self.name, {}).get("pool", {})

    def stop(self, grace=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def preload(mod, task, n, queue, args=()):
    with mod.app.producer_or_acquire() as producer:
        for _ in range(n):
            task.apply_async(args, queue=queue, producer=producer)


def drain(mod, url, pool, task, n, concurrency, args=(), timeout=600):
    """Preloads ``n`` tasks, starts a worker, opens the queue; returns
    (seconds to drain or None, (rss, peak rss))."""
    mod.r().flushall()
    queue = "q-" + uuid.uuid4().hex[:8]
    preload(mod, task, n, queue, args)
    w = Worker(mod, url, pool, concurrency, "idle-" + queue)
    try:
        t0 = time.monotonic()
        w.consume(queue)
        took = until(lambda: int(mod.r().get("done") or 0) >= n, timeout, 0.05)
        wall = None if took is None else time.monotonic() - t0
        return wall, w.rss()
    finally:
        w.stop()


def features(mod, url, pool):
    """Resize, soft limit, hard limit, then revoke-terminate at -c 1."""
    from celery.exceptions import TimeLimitExceeded

    out = {}
    mod.r().flushall()
    w = Worker(mod, url, pool, 1, "celery")
    try:
        before = w.stats().get("max-concurrency")
        rep = mod.app.control.pool_grow(2, destination=[w.name], reply=True)
        after = w.stats().get("max-concurrency")
        ok = before is not None and after == before + 2
        out["resize"] = "yes" if ok else f"no ({_reply(rep)})"
        if ok:
            mod.app.control.pool_shrink(2, destination=[w.name], reply=True)

        try:
            v = mod.soft_limited.delay().get(timeout=20)
            out["soft limit"] = "yes" if v == "soft limit raised" else f"no ({v})"
        except Exception as e:  # noqa: BLE001 -- the bench reports what happened
            out["soft limit"] = f"no ({type(e).__name__})"

        t0 = time.monotonic()
        try:
            v = mod.hard_limited.delay().get(timeout=20)
            out["hard limit"] = f"no ({v})"
        except TimeLimitExceeded:
            took = time.monotonic() - t0
            out["hard limit"] = "yes" if took < 4 else f"late ({took:.1f} s)"
        except Exception as e:  # noqa: BLE001
            out["hard limit"] = f"no ({type(e).__name__})"
        # whatever the pool did, let a slot free up before the next step
        until(lambda: _free(mod), 10)

        res = mod.blocked.delay(30)
        if until(lambda: res.state == "STARTED", 20) is None:
            out["terminate"] = "no (task did not start)"
            out["revoke latency"] = None
            return out
        t0 = time.monotonic()
        res.revoke(terminate=True, signal="SIGTERM")
        nxt = mod.ping.delay()
        try:
            nxt.get(timeout=10)
            lat = time.monotonic() - t0
            out["revoke latency"] = lat * 1000
            finished = mod.r().get("blocked-finished")
            out["terminate"] = "yes" if not finished else "no (task ran on)"
        except Exception:  # noqa: BLE001 -- slot still held after 10 s
            out["revoke latency"] = None
            out["terminate"] = "no (slot held > 10 s)"
        return out
    finally:
        w.stop(grace=5)


def _free(mod):
    try:
        return mod.ping.delay().get(timeout=1) == "pong"
    except Exception:  # noqa: BLE001
        return False


def _reply(rep):
    if not rep:
        return "no reply"
    for r in rep:
        for v in r.values():
            return v.get("error") or v.get("ok") or str(v)
    return str(rep)


def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}" if v < 100 else f"{v:,.0f}{unit}"
    return f"{v}{unit}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    ap.add_argument("--pools", default=",".join(POOLS))
    ap.add_argument("--trivial", type=int, default=20000)
    ap.add_argument("--sleepers", type=int, default=10000)
    ap.add_argument("--trivial-concurrency", type=int, default=100)
    ap.add_argument("--sleep-concurrency", type=int, default=1000)
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    if a.quick:
        a.trivial //= 10
        a.sleepers //= 10
    pools = [p for p in a.pools.split(",") if p]

    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not on PATH")
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    os.environ["GREENPOOL_BENCH_REDIS"] = url
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    redis_proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--dir", workdir],
                                  stdout=subprocess.DEVNULL)
    sys.path.insert(0, HERE)
    import worker_pools_app as mod

    until(lambda: _ping_redis(mod), 10)
    rows = {}
    try:
        for pool in pools:
            row = rows[pool] = {}
            log(f"{pool}: {a.trivial} trivial tasks at -c {a.trivial_concurrency}")
            wall, _ = drain(mod, url, pool, mod.trivial, a.trivial, a.trivial_concurrency)
            row["trivial tasks/s"] = None if wall is None else a.trivial / wall
            log(f"{pool}: {a.sleepers} x sleep(1 s) at -c {a.sleep_concurrency}")
            wall, (rss, peak) = drain(mod, url, pool, mod.sleeper, a.sleepers,
                                      a.sleep_concurrency, args=(1.0,))
            row["sleepers wall s"] = wall
            row["sleepers peak RSS MiB"] = peak
            log(f"{pool}: features and revoke latency")
            row.update(features(mod, url, pool))
            log(f"{pool}: {row}")
    finally:
        import gc

        gc.collect()  # results still waiting on Redis go while it is up
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    cols = ["trivial tasks/s", "sleepers wall s", "sleepers peak RSS MiB", "revoke latency",
            "terminate", "soft limit", "hard limit", "resize"]
    heads = [f"{a.trivial:,} trivial (tasks/s)", f"{a.sleepers:,} × sleep 1 s wall (s)",
             "peak RSS (MiB)", "revoke-terminate latency (ms)", "terminate", "soft limit",
             "hard limit", "resize"]
    print("| pool | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    for pool, row in rows.items():
        print(f"| {pool} | " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


def _ping_redis(mod):
    try:
        return mod.r().ping()
    except Exception:  # noqa: BLE001
        return False


if __name__ == "__main__":
    main()
