"""The Python half of the pool's event loops: coroutine tasks.

Each loop runs on an OS thread owned by the native pool (``loops.rs``),
which calls :func:`run_loop`. A job queued for the loop arrives through
``LoopHandle.take()`` as a ``GreenJob`` and becomes one asyncio task whose
coroutine is a :class:`Driver`.

The driver runs the job's target (Celery's tracer, or an ``async def``
function) in a greenlet of its own, on the loop's thread. When the task's
coroutine awaits, the future it awaits travels up out of the greenlet to
the driver, which yields it to asyncio; the outcome travels back down. So
Celery's synchronous tracer (signals, ``self.request``, retries, results,
chains) runs unchanged around an ``async def`` body, the body runs on the
loop, and ``self.request`` is the task's own: Celery's request stack is
local to each greenlet.

Kills and limits reach the coroutine through its asyncio task, from any
thread (``Driver.kill`` / ``Driver.soft``): a kill cancels it (the
``CancelledError`` lands at its current ``await``; ``finally`` blocks and
``async with`` exits run); the soft limit cancels it too, and the driver
turns that cancellation into ``SoftTimeLimitExceeded`` at the same ``await``
(as ``asyncio.timeout`` turns one into ``TimeoutError``).

A step that does not yield (a blocking call inside async code) holds the
whole loop: the :class:`Watchdog` sees a step older than the threshold, logs
it once per task with the stack where it blocks, and counts it.
"""
import asyncio
import collections
import contextvars
import functools
import inspect
import logging
import sys
import threading
import time
import traceback

from greenlet import getcurrent, greenlet

logger = logging.getLogger("greenpool.celery")

#: Seconds between two heartbeats of a loop (its lag is measured on them).
BEAT_INTERVAL = 0.1
#: Lag samples kept for the p99.
LAG_SAMPLES = 1024
#: Seconds a closing loop gives the coroutines it cancels to end.
CLOSE_TIMEOUT = 5.0


class LoopSettings:
    """How the pool's loops run: ``kind`` ("asyncio" or "uvloop"),
    ``block_threshold`` (seconds a step may hold its loop before it is
    reported as blocking)."""

    def __init__(self, kind="asyncio", block_threshold=0.25):
        if kind not in ("asyncio", "uvloop"):
            raise ValueError(f"GREENPOOL_LOOP={kind!r}: choose 'asyncio' or 'uvloop'")
        self.kind = kind
        self.block_threshold = block_threshold

    def new_loop(self):
        if self.kind == "uvloop":
            try:
                import uvloop
            except ImportError:
                raise RuntimeError(
                    "GREENPOOL_LOOP=uvloop but uvloop is not installed (pip install uvloop)"
                ) from None
            return uvloop.new_event_loop()
        return asyncio.new_event_loop()


class TaskGreenlet(greenlet):
    """The greenlet a job's target runs in. ``armed`` until the bridge of a
    Celery task took it: only the tracer's own call of the task runs the
    coroutine in place; a task called directly from inside returns its
    coroutine, as it would anywhere else."""

    job = None
    armed = False


def _green_main(job):
    """The body of a job's greenlet: the target, and the coroutine it
    returns when it is an ``async def`` function itself."""
    kwargs = job.kwargs
    result = job.target(*job.args, **kwargs) if kwargs else job.target(*job.args)
    if inspect.iscoroutine(result):
        getcurrent().armed = False
        return await_here(result, job)
    return result


def await_here(coro, job):
    """Runs ``coro`` to its end from inside the job's greenlet: each future
    it awaits goes up to the driver, which resumes this greenlet with the
    outcome. Returns its value or raises its exception; when a kill came
    first, the outcome is dropped and ``CancelledError`` raised instead."""
    parent = getcurrent().parent
    if job.killed():
        coro.close()
        raise asyncio.CancelledError()
    send = None
    throw = None
    while True:
        try:
            if throw is None:
                awaited = coro.send(send)
            else:
                exc, throw = throw, None
                awaited = coro.throw(exc)
        except StopIteration as stop:
            if not job.settle():
                raise asyncio.CancelledError() from None
            return stop.value
        except BaseException:
            if not job.settle():
                raise asyncio.CancelledError() from None
            raise
        try:
            send = parent.switch(awaited)
        except BaseException as exc:  # thrown in by the driver
            send, throw = None, exc


def bridge(fn):
    """Wraps a Celery task's ``async def`` run function: called by the
    tracer inside a job's greenlet, it runs the coroutine there and returns
    its value (so the tracer sees a plain result or exception); called
    anywhere else, it returns the coroutine unchanged."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        coro = fn(*args, **kwargs)
        glet = getcurrent()
        if isinstance(glet, TaskGreenlet) and glet.armed and inspect.iscoroutine(coro):
            glet.armed = False
            return await_here(coro, glet.job)
        return coro

    run.__greenpool_async__ = fn
    return run


def _uncancel(task):
    uncancel = getattr(task, "uncancel", None)  # Python 3.11+
    if uncancel is not None:
        uncancel()


class Driver:
    """One coroutine job on its loop: the awaitable its asyncio task runs.
    ``kill()`` and ``soft()`` may be called from any thread."""

    __slots__ = ("job", "runner", "task", "soft_pending", "logged", "soft_error")

    def __init__(self, job, runner, soft_error):
        self.job = job
        self.runner = runner
        self.task = None
        self.soft_pending = False
        self.logged = False
        self.soft_error = soft_error

    def kill(self):
        self.runner.call_soon_threadsafe(self._cancel, False)

    def soft(self):
        self.runner.call_soon_threadsafe(self._cancel, True)

    def _cancel(self, soft):
        task = self.task
        if task is None or task.done():
            return
        self.soft_pending = soft
        task.cancel()

    def __await__(self):
        job = self.job
        runner = self.runner
        if not job.begin(self):
            job.release()
            return None
        glet = TaskGreenlet(_green_main, getcurrent())
        glet.job = job
        glet.armed = True
        glet.gr_context = contextvars.copy_context()
        try:
            runner.enter(self)
            try:
                out = glet.switch(job)
            finally:
                runner.leave()
            while not glet.dead:
                try:
                    sent = yield out
                except GeneratorExit:
                    # The task is being closed (its loop went away): the
                    # target cannot go on; the job reports what it raised.
                    self._throw(glet, asyncio.CancelledError())
                    raise
                except BaseException as exc:
                    out = self._throw(glet, self._translate(exc))
                else:
                    runner.enter(self)
                    try:
                        out = glet.switch(sent)
                    finally:
                        runner.leave()
        except BaseException as exc:
            job.finish(False, exc)
            if isinstance(exc, GeneratorExit):
                raise
            return None
        job.finish(True, out)
        return None

    def _throw(self, glet, exc):
        self.runner.enter(self)
        try:
            return glet.throw(exc)
        finally:
            self.runner.leave()

    def _translate(self, exc):
        """A cancellation asked for by the soft limit becomes the task's
        ``SoftTimeLimitExceeded``; anything else goes in as it is."""
        if self.soft_pending and isinstance(exc, asyncio.CancelledError):
            self.soft_pending = False
            _uncancel(self.task)
            return self.soft_error()
        return exc


async def _drive(driver, runner):
    try:
        await driver
    finally:
        runner.ended()


class LoopStats:
    """What a loop counts for ``info()``: heartbeat lags, blocking steps."""

    def __init__(self):
        self.lags = collections.deque(maxlen=LAG_SAMPLES)
        self.blocks = 0
        self.blocked_seconds = 0.0


class LoopRunner:
    """One event loop on its (native) thread."""

    def __init__(self, handle, settings, soft_error):
        self.handle = handle
        self.settings = settings
        self.soft_error = soft_error
        self.loop = settings.new_loop()
        self.stats = LoopStats()
        self.ident = None
        self.live = 0
        self._idle = None
        #: (driver, started) of the step running now, else None.
        self.step = None
        self._flagged = None
        self._beat_at = 0.0

    # ----- on the loop's thread ---------------------------------------------

    def run(self):
        loop = self.loop
        asyncio.set_event_loop(loop)
        self.ident = threading.get_ident()
        self._idle = asyncio.Event()
        self._idle.set()
        loop.add_reader(self.handle.fd, self._drain)
        self._beat_at = loop.time() + BEAT_INTERVAL
        loop.call_at(self._beat_at, self._beat)
        self.handle.ready(self)
        try:
            loop.run_forever()
        finally:
            self._close()

    def _drain(self):
        create = self.loop.create_task
        soft_error = self.soft_error
        jobs = self.handle.take()
        if jobs:
            self.live += len(jobs)
            self._idle.clear()
        for job in jobs:
            driver = Driver(job, self, soft_error)
            driver.task = create(_drive(driver, self))

    def ended(self):
        self.live -= 1
        if self.live == 0:
            self._idle.set()


    def _beat(self):
        now = self.loop.time()
        self.stats.lags.append(max(0.0, now - self._beat_at))
        self._beat_at = now + BEAT_INTERVAL
        self.loop.call_at(self._beat_at, self._beat)

    def enter(self, driver):
        self.step = (driver, time.monotonic())

    def leave(self):
        step = self.step
        self.step = None
        if step is None:
            return
        held = time.monotonic() - step[1]
        if held > self.settings.block_threshold:
            self.stats.blocked_seconds += held
            if self._flagged is not step:
                self.stats.blocks += 1

    async def _stop(self, timeout):
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.loop.stop()

    def _close(self):
        loop = self.loop
        try:
            loop.remove_reader(self.handle.fd)
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                # Bounded: a coroutine that swallows its cancellation must
                # not hold the worker's shutdown for ever.
                loop.run_until_complete(asyncio.wait(pending, timeout=CLOSE_TIMEOUT))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    # ----- from any thread ----------------------------------------------------

    def call_soon_threadsafe(self, fun, *args):
        try:
            self.loop.call_soon_threadsafe(fun, *args)
        except RuntimeError:
            pass  # the loop is closed: nothing left to reach

    def stop(self, timeout):
        """Waits (on the loop) up to ``timeout`` seconds for its coroutines
        to end, then stops it; what is left is cancelled as it closes."""
        self.call_soon_threadsafe(self._start_stop, timeout)

    def _start_stop(self, timeout):
        self.loop.create_task(self._stop(timeout))

    # ----- for the watchdog ---------------------------------------------------

    def check_blocked(self, now):
        """Called by the watchdog: reports the running step once it held
        the loop past the threshold (once per step; logged once per task)."""
        step = self.step
        if step is None or step is self._flagged:
            return
        driver, started = step
        held = now - started
        if held <= self.settings.block_threshold:
            return
        self._flagged = step
        self.stats.blocks += 1
        if driver.logged:
            return
        driver.logged = True
        frame = sys._current_frames().get(self.ident)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)"
        label = driver.job.label
        name, task_id = label if isinstance(label, tuple) and len(label) == 2 else (
            getattr(driver.job.target, "__qualname__", repr(driver.job.target)), driver.job.pid)
        logger.warning(
            "Task %s[%s] has blocked its event loop for %.2f s: a call inside async "
            "code that does not await (run it with asyncio.to_thread, or use an async "
            "client). Stack where it blocks:\n%s",
            name, task_id, held, stack,
        )


class Watchdog:
    """One thread that looks at every loop of a pool ten times a second."""

    def __init__(self, period=0.1):
        self.period = period
        self.runners = []
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    def add(self, runner):
        with self._lock:
            self.runners.append(runner)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="greenpool-loop-watchdog", daemon=True)
                self._thread.start()

    def close(self):
        self._stop.set()

    def _run(self):
        while not self._stop.wait(self.period):
            now = time.monotonic()
            with self._lock:
                runners = list(self.runners)
            for runner in runners:
                try:
                    runner.check_blocked(now)
                except Exception:  # never let a report stop the watch
                    logger.exception("greenpool: the loop watchdog failed")

    def info(self):
        """Counts over every loop, in ``info()``'s keys."""
        with self._lock:
            runners = list(self.runners)
        lags = sorted(lag for r in runners for lag in list(r.stats.lags))
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0.0
        return {
            "loop-blocks": sum(r.stats.blocks for r in runners),
            "loop-blocked-seconds": round(sum(r.stats.blocked_seconds for r in runners), 6),
            "loop-lag-p99-ms": round(p99 * 1000.0, 3),
            "loop-lag-max-ms": round((lags[-1] if lags else 0.0) * 1000.0, 3),
        }


def run_loop(handle, settings, watchdog, soft_error):
    """Runs one loop on the calling thread until it is stopped (called by
    the native pool on a thread it owns)."""
    runner = LoopRunner(handle, settings, soft_error)
    watchdog.add(runner)
    runner.run()
