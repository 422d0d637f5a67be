#!/usr/bin/env python3
"""greenpool's Python twin of `greenpool bench`: Celery's eventlet TaskPool.

Runs the standard workloads (throughput, sleepers, accept_latency,
terminate, resize, timer) on the real ``celery.concurrency.eventlet.TaskPool``
after ``eventlet.monkey_patch()``, with the same names and parameters as the
Rust side, and prints ONE JSON object on stdout. Progress goes to stderr.
Each workload runs in a fresh child interpreter, so that its RSS figures start
from a clean process.

Install (any python3 >= 3.8; a venv outside the repository is simplest):

    python3 -m venv ~/venv-greenpool-bench
    ~/venv-greenpool-bench/bin/pip install celery eventlet

Run it on its own, or let `greenpool bench --python` run it:

    ~/venv-greenpool-bench/bin/python bench/python/eventlet_pool.py --quick
    ~/venv-greenpool-bench/bin/python bench/python/eventlet_pool.py --only throughput
    greenpool bench --python --python-bin ~/venv-greenpool-bench/bin/python

Exit status: 0 on success (a workload that failed is reported under
"errors"), 3 when celery or eventlet cannot be imported (the message on
stderr says how to install them), 2 on bad arguments.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

INSTALL_HINT = (
    "install them into a virtualenv, e.g.\n"
    "    python3 -m venv ~/venv-greenpool-bench\n"
    "    ~/venv-greenpool-bench/bin/pip install celery eventlet\n"
    "then pass --python-bin ~/venv-greenpool-bench/bin/python to greenpool bench"
)

# Sizes shared with greenpool-cli/src/bench (keep both in step).
FULL = {
    "throughput": {"jobs": 100_000, "limit": 1000},
    "sleepers": {"jobs": 10_000, "limit": 10_000, "secs": 1.0},
    "accept_latency": {"jobs": 20_000, "limit": 100, "secs": 0.001},
    "terminate": {"jobs": 10_000, "limit": 10_000, "secs": 60.0},
    "resize": {"jobs": 1000, "limit": 100, "ops": 10_000, "secs": 0.001, "batch": 100},
    "timer": {"entries": 500_000, "lo": 1.0, "hi": 1000.0},
    "timer_kombu": {"entries": 1_000_000, "lo": 1.0, "hi": 1000.0},
}
QUICK = {
    "throughput": {"jobs": 10_000, "limit": 1000},
    "sleepers": {"jobs": 2000, "limit": 2000, "secs": 1.0},
    "accept_latency": {"jobs": 2000, "limit": 100, "secs": 0.001},
    "terminate": {"jobs": 2000, "limit": 2000, "secs": 60.0},
    "resize": {"jobs": 1000, "limit": 100, "ops": 10_000, "secs": 0.001, "batch": 100},
    "timer": {"entries": 20_000, "lo": 1.0, "hi": 1000.0},
    "timer_kombu": {"entries": 100_000, "lo": 1.0, "hi": 1000.0},
}
# `--only timer` also runs the kombu variant.
GROUPS = {"timer": ["timer", "timer_kombu"]}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def status_kib(field):
    """A `Vm*` line of /proc/self/status in KiB (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def percentile(values, p):
    """Nearest-rank percentile; `values` must be sorted."""
    if not values:
        return None
    rank = -(-len(values) * p // 100)  # ceil
    return values[int(min(max(rank, 1), len(values))) - 1]


# ---------------------------------------------------------------------------
# workloads: each runs in its own child, after eventlet.monkey_patch()


class Bench:
    """The workloads; imports eventlet/celery lazily, inside the child."""

    def __init__(self):
        import warnings

        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
        import eventlet

        eventlet.monkey_patch()
        import eventlet.event
        from celery.concurrency.eventlet import TaskPool

        self.eventlet = eventlet
        self.Event = eventlet.event.Event
        self.TaskPool = TaskPool
        self.clock = time.perf_counter

    def pool(self, limit):
        p = self.TaskPool(limit=limit)
        p.start()
        return p

    def spin_until(self, cond, timeout=300.0):
        """Give the hub the CPU until cond() holds."""
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise RuntimeError("condition not reached in %.0f s" % timeout)
            self.eventlet.sleep(0)

    def throughput(self, jobs, limit):
        pool = self.pool(limit)
        done = self.Event()
        state = {"n": 0, "sum": 0, "last": 0.0, "accepted": 0}

        def job(x):
            return x

        def accepted(_pid, _t):
            state["accepted"] += 1

        def finished(value):
            state["n"] += 1
            state["sum"] += value
            if state["n"] == jobs:
                state["last"] = self.clock()
                done.send()

        start = self.clock()
        for i in range(jobs):
            pool.apply_async(job, (i,), None, callback=finished, accept_callback=accepted)
        done.wait()
        elapsed = state["last"] - start
        pool.stop()
        return {
            "jobs_per_s": jobs / elapsed,
            "elapsed_s": elapsed,
            "callbacks": state["n"],
            "accepts": state["accepted"],
            "values_ok": state["sum"] == jobs * (jobs - 1) // 2,
        }

    def sleepers(self, jobs, limit, secs):
        pool = self.pool(limit)
        done = self.Event()
        state = {"n": 0, "accepted": 0, "last": 0.0}

        def accepted(_pid, _t):
            state["accepted"] += 1

        def finished(_value):
            state["n"] += 1
            if state["n"] == jobs:
                state["last"] = self.clock()
                done.send()

        import gc

        gc.collect()
        self.eventlet.sleep(0)
        rss_before = status_kib("VmRSS")
        start = self.clock()
        for _ in range(jobs):
            pool.apply_async(self.eventlet.sleep, (secs,), None,
                             callback=finished, accept_callback=accepted)
        self.spin_until(lambda: state["accepted"] == jobs)
        parked_at = self.clock() - start
        rss_parked = status_kib("VmRSS")
        done.wait()
        wall = state["last"] - start
        pool.stop()
        return {
            "wall_s": wall,
            "all_parked_after_s": parked_at,
            "rss_before_kib": rss_before,
            "rss_parked_kib": rss_parked,
            "bytes_per_parked_job": (rss_parked - rss_before) * 1024.0 / jobs,
            "vm_hwm_kib": status_kib("VmHWM"),
            "callbacks": state["n"],
        }

    def accept_latency(self, jobs, limit, secs):
        pool = self.pool(limit)
        done = self.Event()
        called = [0.0] * jobs
        accepted_at = [0.0] * jobs
        state = {"n": 0}

        def finished(_value):
            state["n"] += 1
            if state["n"] == jobs:
                done.send()

        def make_accept(i):
            def accepted(_pid, t):
                accepted_at[i] = t  # time.monotonic() taken by celery
            return accepted

        for i in range(jobs):
            called[i] = time.monotonic()
            pool.apply_async(self.eventlet.sleep, (secs,), None,
                             callback=finished, accept_callback=make_accept(i))
        done.wait()
        pool.stop()
        lat = sorted((accepted_at[i] - called[i]) * 1e6 for i in range(jobs))
        return {
            "accept_p50_us": percentile(lat, 50),
            "accept_p99_us": percentile(lat, 99),
            "accept_max_us": lat[-1],
            "callbacks": state["n"],
        }

    def terminate(self, jobs, limit, secs):
        pool = self.pool(limit)
        pids = [None] * jobs
        callbacks = [0] * jobs
        state = {"accepted": 0}

        def make_callbacks(i):
            def accepted(pid, _t):
                pids[i] = pid
                state["accepted"] += 1

            def finished(_value):
                callbacks[i] += 1
            return accepted, finished

        for i in range(jobs):
            acc, fin = make_callbacks(i)
            pool.apply_async(self.eventlet.sleep, (secs,), None,
                             callback=fin, accept_callback=acc)
        self.spin_until(lambda: state["accepted"] == jobs)
        lat = []
        clock = self.clock
        start = clock()
        for pid in pids:
            t = clock()
            pool.terminate_job(pid)
            lat.append(clock() - t)
        total = clock() - start
        for _ in range(3):
            self.eventlet.sleep(0)
        pool.stop()
        lat = sorted(x * 1e6 for x in lat)
        return {
            "kills_per_s": jobs / total,
            "kill_p50_us": percentile(lat, 50),
            "kill_p99_us": percentile(lat, 99),
            "jobs_with_callback": sum(1 for c in callbacks if c > 0),
            "jobs_with_two_callbacks": sum(1 for c in callbacks if c > 1),
        }

    def resize(self, jobs, limit, ops, secs, batch):
        pool = self.pool(limit)
        done = self.Event()
        state = {"n": 0}

        def finished(_value):
            state["n"] += 1
            if state["n"] == jobs:
                done.send()

        def feed():
            for _ in range(jobs):
                pool.apply_async(self.eventlet.sleep, (secs,), None, callback=finished)

        feeder = self.eventlet.spawn(feed)
        self.eventlet.sleep(0)
        grow, shrink, clock = pool.grow, pool.shrink, self.clock
        in_ops = 0.0
        made = 0
        while made < ops:
            t = clock()
            for _ in range(batch // 2):
                grow(1)
                shrink(1)
            in_ops += clock() - t
            made += batch // 2 * 2
            self.eventlet.sleep(0)
        feeder.wait()
        done.wait()
        final_limit = pool.limit
        pool.stop()
        return {
            "resize_ops_per_s": made / in_ops,
            "ops": made,
            "final_limit": final_limit,
            "callbacks": state["n"],
        }

    def _timer(self, timer, entries, lo, hi):
        import gc
        import random

        rng = random.Random(1)
        delays = [rng.uniform(lo, hi) for _ in range(entries)]

        def fire():
            pass

        gc.collect()
        rss_before = status_kib("VmRSS")
        call_after = timer.call_after
        t = self.clock()
        refs = [call_after(d, fire) for d in delays]
        scheduled = self.clock() - t
        rss_pending = status_kib("VmRSS")
        cancel = timer.cancel
        t = self.clock()
        for ref in refs:
            cancel(ref)
        cancelled = self.clock() - t
        return {
            "schedule_ops_per_s": entries / scheduled,
            "cancel_ops_per_s": entries / cancelled,
            "schedule_cancel_pairs_per_s": entries / (scheduled + cancelled),
            "bytes_per_entry": (rss_pending - rss_before) * 1024.0 / entries,
            "vm_hwm_kib": status_kib("VmHWM"),
        }

    def timer(self, entries, lo, hi):
        return self._timer(self.TaskPool.Timer(), entries, lo, hi)

    def timer_kombu(self, entries, lo, hi):
        from kombu.asynchronous.timer import Timer

        return self._timer(Timer(), entries, lo, hi)


# ---------------------------------------------------------------------------
# parent


def versions():
    import warnings

    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import celery
    import eventlet
    import greenlet
    import kombu

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "celery": celery.__version__,
        "eventlet": eventlet.__version__,
        "greenlet": greenlet.__version__,
        "kombu": kombu.__version__,
    }


def run_child(name, quick):
    params = (QUICK if quick else FULL)[name]
    started = time.perf_counter()
    figures = getattr(Bench(), name)(**params)
    out = {"params": params, "figures": figures,
           "child_wall_s": time.perf_counter() - started}
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, a few seconds each")
    ap.add_argument("--only", action="append", metavar="NAME",
                    choices=sorted(set(FULL) | set(GROUPS)),
                    help="run only this workload (repeatable)")
    ap.add_argument("--check", action="store_true",
                    help="only check that celery and eventlet import; print versions")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    try:
        found = versions()
    except ImportError as exc:
        log("greenpool bench: cannot import %s in %s (%s); %s"
            % (exc.name or "celery/eventlet", sys.executable, exc, INSTALL_HINT))
        sys.exit(3)

    if args.child:
        run_child(args.child, args.quick)
        return
    if args.check:
        print(json.dumps({"versions": found}))
        return

    names = list(FULL)
    if args.only:
        wanted = set()
        for o in args.only:
            wanted.update(GROUPS.get(o, [o]))
        names = [n for n in names if n in wanted]

    report = {
        "driver": "bench/python/eventlet_pool.py",
        "pool": "celery.concurrency.eventlet.TaskPool",
        "quick": args.quick,
        "versions": found,
        "machine": {"nproc": os.cpu_count(), "arch": platform.machine(),
                    "system": platform.system()},
        "workloads": {},
        "errors": {},
    }
    for k, name in enumerate(names, 1):
        log("python [%d/%d] %s" % (k, len(names), name))
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name]
        if args.quick:
            cmd.append("--quick")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            report["errors"][name] = "exit status %s: %s" % (
                proc.returncode, proc.stderr.strip()[-1500:])
            continue
        report["workloads"][name] = json.loads(lines[-1])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
