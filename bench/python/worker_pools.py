#!/usr/bin/env python3
"""One Celery app under several worker pools, measured in one run:
``-P custom`` (greenpool.celery:TaskPool), ``-P eventlet``, ``-P gevent``,
``-P threads`` and, for the ``async def`` workloads only, celery-aio-pool
(``-P custom`` with celery_aio_pool.pool:AsyncIOPool) as a baseline.

Workloads (each on a fresh worker, queue preloaded, then opened with
``add_consumer`` so that start-up is not timed):

* trivial:           20,000 trivial tasks drained at -c 100 (tasks/s);
* async-trivial:     the same with an ``async def`` task, on the pools that
                     run coroutines (tasks/s);
* sleepers:          10,000 tasks that sleep 1 s at -c 1000 (wall time,
                     worker peak RSS);
* async-sleepers:    10,000 tasks that sleep 1 s at -c 10000 (threads:
                     -c 1000): ``await asyncio.sleep(1)`` on the pools that
                     run coroutines, ``time.sleep(1)`` on the others (wall
                     time, worker peak RSS);
* async-round-trips: 10,000 tasks that each GET a key from the bench's
                     Redis, at the concurrency of async-sleepers:
                     ``redis.asyncio`` on the pools that run coroutines,
                     redis-py on the others (wall time, worker peak RSS);
* features:          terminate, soft limit, hard limit, resize, each
                     measured, and the revoke latency: time until the slot
                     of a task blocked in ``time.sleep`` and revoked with
                     ``terminate=True`` runs the next task, at -c 1.

celery-aio-pool runs only the three async workloads. A pool whose package
is not installed gets a row that says so. A drain is given up when it is
not done by --timeout, or when after 30 s its rate so far could not finish
it by then; its cell shows how many tasks were done.

Usage (a venv with celery[redis], eventlet, gevent, greenpool and
optionally celery-aio-pool installed; redis-server on PATH)::

    python bench/python/worker_pools.py            # full sizes
    python bench/python/worker_pools.py --quick    # a tenth of the sizes
    python bench/python/worker_pools.py --pools custom,threads --json out.json
    python bench/python/worker_pools.py --workloads async-sleepers,async-round-trips

Prints progress to stderr and Markdown tables to stdout.
"""
import argparse
import importlib.util
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
from typing import NamedTuple, Optional

HERE = os.path.dirname(os.path.abspath(__file__))


class Pool(NamedTuple):
    """How ``celery worker`` is started on a pool, and what it can run."""

    option: str                 #: the ``-P`` value
    custom: Optional[str]       #: CELERY_CUSTOM_WORKER_POOL for ``-P custom``
    package: Optional[str]      #: the package it needs, None if Celery's own
    coroutines: bool            #: runs ``async def`` tasks
    async_only: bool = False    #: a baseline for the async workloads only


POOLS = {
    "custom": Pool("custom", "greenpool.celery:TaskPool", "greenpool", coroutines=True),
    "eventlet": Pool("eventlet", None, "eventlet", coroutines=False),
    "gevent": Pool("gevent", None, "gevent", coroutines=False),
    "threads": Pool("threads", None, None, coroutines=False),
    "celery-aio-pool": Pool("custom", "celery_aio_pool.pool:AsyncIOPool", "celery_aio_pool",
                            coroutines=True, async_only=True),
}
WORKLOADS = ("trivial", "async-trivial", "sleepers", "async-sleepers", "async-round-trips",
             "features")
#: A drain is judged on its rate once this many seconds have passed.
JUDGE_AFTER = 30.0


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


class WorkerStartError(RuntimeError):
    """The worker exited, or did not answer a ping within 60 s."""


class Worker:
    def __init__(self, mod, url, pool, concurrency, queue):
        env = dict(os.environ, GREENPOOL_BENCH_REDIS=url,
                   PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        spec = POOLS[pool]
        if spec.custom:
            env["CELERY_CUSTOM_WORKER_POOL"] = spec.custom
        self.name = f"{pool}-{uuid.uuid4().hex[:6]}@bench"
        self.logf = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{pool}-", suffix=".log",
                                                delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker_pools_app", "worker", "-P", spec.option,
             "-c", str(concurrency), "-n", self.name, "-Q", queue, "--loglevel=WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env, cwd=HERE, stdout=self.logf, stderr=subprocess.STDOUT)
        self.app = mod.app
        if until(lambda: self.proc.poll() is not None
                 or bool(self.app.control.ping([self.name], timeout=0.3)), 60) is None \
                or self.proc.poll() is not None:
            raise WorkerStartError(f"worker {pool} did not start; log: {self.logf.name}")

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


class Drained(NamedTuple):
    """What one drain measured."""

    wall: Optional[float]   #: seconds from opening the queue to the last task, None if given up
    done: int               #: tasks counted when the watch ended
    after: float            #: seconds from opening the queue to the end of the watch
    peak_rss: Optional[float]  #: the worker's VmHWM then, MiB
    log: str                #: the worker's log file


def drain(mod, url, pool, task, n, concurrency, args=(), timeout=600, prepare=None):
    """Preloads ``n`` tasks, starts a worker, opens the queue and watches the
    tasks' count in Redis db 2 (``prepare``, if given, runs after the flush).
    The watch ends when all are counted, at ``timeout`` seconds, or once
    JUDGE_AFTER seconds have passed and the rate so far would not count
    them all by ``timeout``."""
    mod.r().flushall()
    if prepare is not None:
        prepare()
    queue = "q-" + uuid.uuid4().hex[:8]
    preload(mod, task, n, queue, args)
    w = Worker(mod, url, pool, concurrency, "idle-" + queue)
    try:
        t0 = time.monotonic()
        w.consume(queue)
        while True:
            done = int(mod.r().get("done") or 0)
            after = time.monotonic() - t0
            if done >= n or after > timeout or (after > JUDGE_AFTER and done * timeout < n * after):
                break
            time.sleep(0.05)
        return Drained(after if done >= n else None, done, after, w.rss()[1], w.logf.name)
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


def applies(pool, workload):
    """Whether ``workload`` runs on ``pool``: the async workloads run on
    every pool (the sync twin of the task where the pool runs no
    coroutines) except async-trivial, which needs coroutines; the others
    run on every pool that is not a baseline for the async ones only."""
    spec = POOLS[pool]
    if workload == "async-trivial":
        return spec.coroutines
    return workload.startswith("async-") or not spec.async_only


def run_pool(mod, url, pool, a, workloads):
    """Runs the selected workloads that apply to ``pool``; returns its row.
    A drain that is given up leaves its figure None and the count reached
    under "<workload> unfinished"; a worker that does not start leaves its
    log's name under "<workload> error"."""
    spec = POOLS[pool]
    if spec.package and importlib.util.find_spec(spec.package) is None:
        log(f"{pool}: {spec.package} is not installed, skipped")
        return {"not installed": spec.package}
    row = {}
    kind = "async def" if spec.coroutines else "def"
    wide = a.threads_concurrency if pool == "threads" else a.async_concurrency
    if any(w in workloads for w in ("async-sleepers", "async-round-trips")):
        row["async task"] = kind
        row["async -c"] = wide

    def measure(workload, what, task, n, concurrency, args=(), prepare=None):
        """Drains ``n`` of ``task`` (``what`` names it in the progress log)
        and notes in the row how far a drain that was given up got."""
        log(f"{pool}: {n} x {what} at -c {concurrency}")
        res = drain(mod, url, pool, task, n, concurrency, args, a.timeout, prepare)
        if res.wall is None:
            row[f"{workload} unfinished"] = {"done": res.done, "of": n, "after s": res.after,
                                             "worker log": res.log}
            log(f"{pool}: {workload} given up, {res.done} of {n} done in {res.after:.1f} s "
                f"(worker log: {res.log})")
        return res

    for workload in workloads:
        if not applies(pool, workload):
            continue
        try:
            if workload == "trivial":
                res = measure(workload, "trivial", mod.trivial, a.trivial, a.trivial_concurrency)
                row["trivial tasks/s"] = None if res.wall is None else a.trivial / res.wall
            elif workload == "async-trivial":
                res = measure(workload, "async def trivial", mod.async_trivial, a.trivial,
                              a.trivial_concurrency)
                row["async trivial tasks/s"] = None if res.wall is None else a.trivial / res.wall
            elif workload == "sleepers":
                res = measure(workload, "sleep(1 s)", mod.sleeper, a.sleepers,
                              a.sleep_concurrency, args=(1.0,))
                row["sleepers wall s"] = res.wall
                row["sleepers peak RSS MiB"] = res.peak_rss
            elif workload == "async-sleepers":
                res = measure(workload, f"{kind} sleep(1 s)",
                              mod.async_sleeper if spec.coroutines else mod.sleeper,
                              a.sleepers, wide, args=(1.0,))
                row["async sleepers wall s"] = res.wall
                row["async sleepers peak RSS MiB"] = res.peak_rss
            elif workload == "async-round-trips":
                res = measure(workload, f"{kind} GET",
                              mod.async_round_trip if spec.coroutines else mod.round_trip,
                              a.round_trips, wide,
                              prepare=lambda: mod.r().set(mod.PAYLOAD_KEY, b"x" * 100))
                row["round trips wall s"] = res.wall
                row["round trips peak RSS MiB"] = res.peak_rss
            else:
                log(f"{pool}: features and revoke latency")
                row.update(features(mod, url, pool))
        except WorkerStartError as e:
            log(f"{pool}: {workload}: {e}")
            row[f"{workload} error"] = str(e)
    log(f"{pool}: {row}")
    return row


def tables(a):
    """The report's two tables, each a list of columns: (the workloads that
    fill it, its key in a row, its heading)."""
    both = ("async-sleepers", "async-round-trips")
    return [
        [(("trivial",), "trivial tasks/s", f"{a.trivial:,} trivial (tasks/s)"),
         (("async-trivial",), "async trivial tasks/s", f"{a.trivial:,} async trivial (tasks/s)"),
         (("sleepers",), "sleepers wall s", f"{a.sleepers:,} × sleep 1 s wall (s)"),
         (("sleepers",), "sleepers peak RSS MiB", "peak RSS (MiB)"),
         (("features",), "revoke latency", "revoke-terminate latency (ms)"),
         (("features",), "terminate", "terminate"),
         (("features",), "soft limit", "soft limit"),
         (("features",), "hard limit", "hard limit"),
         (("features",), "resize", "resize")],
        [(both, "async task", "task"),
         (both, "async -c", "-c"),
         (("async-sleepers",), "async sleepers wall s", f"{a.sleepers:,} × sleep 1 s wall (s)"),
         (("async-sleepers",), "async sleepers peak RSS MiB", "peak RSS (MiB)"),
         (("async-round-trips",), "round trips wall s", f"{a.round_trips:,} round trips wall (s)"),
         (("async-round-trips",), "round trips peak RSS MiB", "peak RSS (MiB)")],
    ]


def cell(pool, row, workload, key):
    """One table cell: the figure, or why there is none."""
    if not applies(pool, workload):
        return "n/a"
    if "not installed" in row:
        return "not installed"
    if row.get(key) is not None:
        return fmt(row[key])
    if f"{workload} error" in row:
        return "worker did not start"
    left = row.get(f"{workload} unfinished")
    if left:
        return f"given up: {left['done']:,} of {left['of']:,} in {left['after s']:.0f} s"
    return "–"


def print_tables(a, workloads, rows):
    """Prints each table that has a selected workload, with the pools it
    applies to, as Markdown."""
    for columns in tables(a):
        columns = [(next(w for w in ws if w in workloads), key, head)
                   for ws, key, head in columns if any(w in workloads for w in ws)]
        pools = [p for p in rows if any(applies(p, w) for w, _, _ in columns)]
        if not columns or not pools:
            continue
        print("| pool | " + " | ".join(head for _, _, head in columns) + " |")
        print("|---|" + "---|" * len(columns))
        for pool in pools:
            print(f"| {pool} | "
                  + " | ".join(cell(pool, rows[pool], w, key) for w, key, _ in columns) + " |")
        print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    ap.add_argument("--pools", default=",".join(POOLS), help="comma-separated, of: "
                    + ", ".join(POOLS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of: "
                    + ", ".join(WORKLOADS))
    ap.add_argument("--trivial", type=int, default=20000)
    ap.add_argument("--sleepers", type=int, default=10000)
    ap.add_argument("--round-trips", type=int, default=10000)
    ap.add_argument("--trivial-concurrency", type=int, default=100)
    ap.add_argument("--sleep-concurrency", type=int, default=1000)
    ap.add_argument("--async-concurrency", type=int, default=10000,
                    help="-c of async-sleepers and async-round-trips (but -P threads)")
    ap.add_argument("--threads-concurrency", type=int, default=1000,
                    help="-c of -P threads in async-sleepers and async-round-trips")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per drain at most")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    if a.quick:
        a.trivial //= 10
        a.sleepers //= 10
        a.round_trips //= 10
    pools = [p for p in a.pools.split(",") if p]
    workloads = [w for w in WORKLOADS if w in a.workloads.split(",")]
    unknown = (set(pools) - set(POOLS)) | (set(a.workloads.split(",")) - set(WORKLOADS) - {""})
    if unknown:
        sys.exit(f"unknown pools or workloads: {', '.join(sorted(unknown))}")

    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not on PATH")
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    os.environ["GREENPOOL_BENCH_REDIS"] = url
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    # room for a connection per task at -c 10000, besides the broker's
    redis_proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--dir", workdir,
                                   "--maxclients", "16000"], stdout=subprocess.DEVNULL)
    sys.path.insert(0, HERE)
    import worker_pools_app as mod

    until(lambda: _ping_redis(mod), 10)
    rows = {}
    try:
        for pool in pools:
            rows[pool] = run_pool(mod, url, pool, a, workloads)
    finally:
        import gc

        gc.collect()  # results still waiting on Redis go while it is up
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    print_tables(a, workloads, rows)
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
