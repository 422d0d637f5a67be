"""Fixtures for the greenpool pool tests: a started pool, callback
recorders, and a Redis server on a free port for the worker tests.

Redis missing: the worker tests are skipped, loudly; with
GREENPOOL_REQUIRE_REDIS=1 they fail instead.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from greenpool.celery import TaskPool

HERE = os.path.dirname(os.path.abspath(__file__))

#: Upper bound of every wait in these tests: a wait that runs out fails.
WAIT = float(os.environ.get("GREENPOOL_TEST_WAIT", "60"))


def wait_for(predicate, what, timeout=WAIT):
    """Polls ``predicate`` until true; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class Recorder:
    """Collects callback calls, thread-safe, with a way to wait for them."""

    def __init__(self):
        self.calls = []
        self._cond = threading.Condition()

    def __call__(self, *args):
        with self._cond:
            self.calls.append(args)
            self._cond.notify_all()

    def wait(self, n=1, timeout=WAIT):
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= n, timeout):
                pytest.fail(f"expected {n} calls, got {len(self.calls)}")
        return self.calls


class Worker:
    """A real ``celery -A <module> worker -P custom`` on greenpool's pool, in
    a subprocess with its output in a file, answering ping once started."""

    def __init__(self, app, url, concurrency, name, extra=(), queue="celery",
                 module="e2e_app"):
        env = dict(os.environ)
        env.update(
            CELERY_CUSTOM_WORKER_POOL="greenpool.celery:TaskPool",
            GREENPOOL_TEST_REDIS=url,
            PYTHONPATH=HERE + os.pathsep + env.get("PYTHONPATH", ""),
        )
        self.name = f"{name}-{uuid.uuid4().hex[:6]}@test"
        self.queue = queue
        self.app = app
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                     f"greenpool-{self.name}.log"), "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", module, "worker",
             "-P", "custom", "-c", str(concurrency), "-n", self.name,
             "-Q", queue, "--loglevel=INFO", "--without-gossip", "--without-mingle",
             *extra],
            env=env, cwd=HERE, stdout=self.log, stderr=subprocess.STDOUT,
        )

        def up():
            assert self.proc.poll() is None, self.output()
            return bool(app.control.ping([self.name], timeout=0.5))

        wait_for(up, f"worker {self.name} to answer ping")

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def inspect(self):
        return self.app.control.inspect([self.name], timeout=5)

    def stats(self):
        replies = self.inspect().stats() or {}
        return replies[self.name]["pool"]

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("worker did not stop:\n" + self.output())


@pytest.fixture
def pool():
    p = TaskPool(limit=4)
    p.start()
    yield p
    p.terminate()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_missing(what):
    if os.environ.get("GREENPOOL_REQUIRE_REDIS") == "1":
        pytest.fail(f"GREENPOOL_REQUIRE_REDIS=1 but {what}")
    print(f"\nSKIPPING worker tests: {what}", file=sys.stderr)
    pytest.skip(what)


@pytest.fixture(scope="session")
def redis_url():
    exe = shutil.which("redis-server")
    if exe is None:
        _redis_missing("redis-server is not installed")
    try:
        import redis  # noqa: F401
    except ImportError:
        _redis_missing("the redis Python client is not installed")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="greenpool-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis as redis_client

    client = redis_client.Redis(port=port)

    def up():
        try:
            return client.ping()
        except redis_client.ConnectionError:
            return False

    wait_for(up, "redis-server to answer")
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)
