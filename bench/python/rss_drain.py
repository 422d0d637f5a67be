"""Peak RSS of `greenpool worker` draining a backlog, as a function of the
pool limit (-c) and the prefetch multiplier.

For each (concurrency, multiplier) pair: a private redis-server, BACKLOG
`greenpool.add` messages pushed on the `celery` queue in kombu's envelope
(with the Python client's own message format, through `app.amqp`), then
`greenpool worker` started under `/usr/bin/time -v`, stopped (SIGTERM)
once every message is acked, and its "Maximum resident set size" read.

    python bench/python/rss_drain.py BINARY [BACKLOG] [C:M ...]

e.g. `python bench/python/rss_drain.py target/release/greenpool 200000
1000:4 1000:1 100:4 10:4`. Results are stored (on the same Redis), as a
worker with a result backend does.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import redis
from celery import Celery


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis():
    port = free_port()
    p = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            return p, port, r
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def enqueue(port, r, n):
    """Pushes n messages built by Celery's own client code."""
    app = Celery(broker=f"redis://127.0.0.1:{port}/0")
    with app.producer_or_acquire() as producer:
        # One message as the client sends it, captured by publishing it
        # once and reading it back off the list.
        app.send_task("greenpool.add", (1, 2), producer=producer)
    raw = r.rpop("celery")
    template = json.loads(raw)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        template["headers"]["id"] = f"rss-{i}"
        template["properties"]["correlation_id"] = f"rss-{i}"
        template["properties"]["delivery_tag"] = f"tag-{i}"
        pipe.lpush("celery", json.dumps(template))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def drained(r):
    return r.llen("celery") == 0 and r.hlen("unacked") == 0


def run(binary, backlog, concurrency, multiplier):
    server, port, r = start_redis()
    try:
        enqueue(port, r, backlog)
        url = f"redis://127.0.0.1:{port}/0"
        out = tempfile.NamedTemporaryFile(delete=False)
        worker = subprocess.Popen(
            ["/usr/bin/time", "-v", "-o", out.name, binary, "worker", "--broker", url,
             "-c", str(concurrency), "--prefetch-multiplier", str(multiplier)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, RUST_LOG="warn"))
        t0 = time.monotonic()
        while not drained(r):
            time.sleep(0.2)
            if worker.poll() is not None:
                raise RuntimeError("the worker exited early")
        took = time.monotonic() - t0
        # /usr/bin/time does not forward signals: stop its child, the
        # worker, and let time report.
        child = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True,
                               text=True).stdout.split()
        for pid in child:
            os.kill(int(pid), signal.SIGTERM)
        worker.wait(timeout=60)
        text = open(out.name).read()
        os.unlink(out.name)
        kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
        results = sum(1 for _ in r.scan_iter("celery-task-meta-*", count=10000))
        return kb / 1024, took, results
    finally:
        server.kill()
        server.wait()


def main():
    binary = sys.argv[1]
    backlog = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    pairs = sys.argv[3:] or ["1000:4"]
    print(f"{'-c':>6} {'multiplier':>10} {'prefetch':>9} {'peak RSS MB':>12} {'drain s':>8} {'results':>8}")
    for pair in pairs:
        c, m = (int(x) for x in pair.split(":"))
        mb, took, results = run(binary, backlog, c, m)
        print(f"{c:>6} {m:>10} {c * m:>9} {mb:>12.1f} {took:>8.1f} {results:>8}", flush=True)


if __name__ == "__main__":
    main()
