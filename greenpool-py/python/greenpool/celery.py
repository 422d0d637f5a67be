"""``greenpool.celery.TaskPool``: a Celery pool whose tasks run under the
greenpool core's limiter (Rust): ``async def`` tasks as coroutines on the
pool's event loops, every other task on an OS thread of its own, with the
eventlet pool's API and the behaviour the eventlet pool lacks.

Coroutines: an ``async def`` task (with or without ``bind=True``) runs on an
asyncio loop (or uvloop) owned by the pool, thousands at once; Celery's own
tracer runs around it in a greenlet, so signals, ``self.request``, retries,
results and chains behave as for a sync task. See :mod:`greenpool._loop`.

Threads: threads are created up to the pool's limit and leave when idle;
the GIL is released whenever Rust waits, so blocking, I/O-bound tasks
(``requests``, database drivers, ``time.sleep``) run concurrently without
monkey-patching.

Both count against one limit, and:

* ``terminate_job(pid, signal)`` / ``revoke(terminate=True)`` end the task at
  once: its slot is freed, it is reported as terminated (Celery's
  ``Terminated``); a thread gets an exception at its next Python bytecode,
  a coroutine is cancelled at its current ``await``. SIGUSR1 raises
  ``SoftTimeLimitExceeded`` instead, as the prefork pool does.
* Soft time limits raise ``SoftTimeLimitExceeded`` in the task; hard limits
  end it as ``TimeLimitExceeded`` on time.
* ``grow``/``shrink`` (``pool_grow``, ``pool_shrink``, autoscale) act at once;
  shrinking below the running count leaves a debt (``free-threads`` < 0).
* pids are unique and never reused; each task gets exactly one report; a
  request revoked while it waited for a slot never starts.

A thread blocked in a C call (``time.sleep``, a socket read) cannot take an
exception until the call returns. A kill or hard limit still ends the job at
once; the thread is *abandoned* (``abandoned-threads`` in
``celery inspect stats``) and leaves when the call returns, its late result
dropped. Python offers no portable way to wake such a call early. A
coroutine that blocks its loop is logged and counted (``loop-blocks``).

Usage::

    CELERY_CUSTOM_WORKER_POOL=greenpool.celery:TaskPool celery -A proj worker -P custom -c 1000

Options (``worker_pool`` kwargs are not passed by Celery; use the
environment): ``GREENPOOL_THREAD_STACK_SIZE`` (bytes, default 1 MiB),
``GREENPOOL_THREAD_IDLE_TIMEOUT`` (seconds, default 30), ``GREENPOOL_LOOPS``
(event loops, default 1), ``GREENPOOL_LOOP`` (``asyncio`` or ``uvloop``),
``GREENPOOL_LOOP_BLOCK_THRESHOLD`` (seconds a coroutine's step may hold its
loop before it is reported, default 0.25).
"""
import ctypes
import inspect
import os
import threading
import time

from billiard.einfo import ExceptionInfo
from billiard.exceptions import Terminated, WorkerLostError
from celery.concurrency.base import BasePool
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.utils.dispatch import Signal
from celery.worker.request import Request as _Request

from . import _loop
from ._greenpool import Pool, Timer

__all__ = (
    "TaskPool",
    "Timer",
    "Hooks",
    "JobKilled",
    "SUPPORTED_CELERY",
    "check_celery_version",
    "pool_started",
    "pool_preshutdown",
    "pool_postshutdown",
    "pool_apply",
)

#: Sent by ``on_start`` (sender: the pool).
pool_started = Signal(name="greenpool_pool_started")
#: Sent by ``on_stop`` before waiting for running tasks (sender: the pool).
pool_preshutdown = Signal(name="greenpool_pool_preshutdown")
#: Sent by ``on_stop`` after every task ended (sender: the pool).
pool_postshutdown = Signal(name="greenpool_pool_postshutdown")
#: Sent by ``on_apply`` with ``target``, ``args``, ``kwargs`` (sender: the pool).
pool_apply = Signal(name="greenpool_pool_apply")

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


class JobKilled(BaseException):
    """Raised in a task's thread when its job was killed (revoke with
    terminate, hard time limit, pool terminate).

    A ``BaseException``, so Celery's tracer does not record it as the task's
    failure: the job was already reported by the pool.
    """


def _einfo(exc):
    return ExceptionInfo((type(exc), exc, exc.__traceback__))


def _raised(exc):
    """``exc`` raised, so that it carries a traceback."""
    try:
        raise exc
    except BaseException as e:  # noqa: B902 -- the whole point
        return _einfo(e)


#: The Celery versions this pool runs on: 5.3 up to (not including) 6.
SUPPORTED_CELERY = ((5, 3), (6, 0))


def check_celery_version(version=None):
    """Raises RuntimeError unless ``version`` (Celery's ``VERSION``, by
    default the installed one) is in :data:`SUPPORTED_CELERY`: the pool
    relies on Celery's tracer, request and local stack as they are there."""
    import celery

    version = tuple(celery.VERSION if version is None else version)
    (lo, hi) = SUPPORTED_CELERY
    if not lo <= tuple(version[:2]) < hi:
        shown = ".".join(str(part) for part in version[:3])
        raise RuntimeError(
            f"greenpool.celery:TaskPool supports Celery 5.3 to 5.x; this is Celery "
            f"{shown} (pip install 'celery>=5.3,<6')")


def _check_request_locals():
    """``self.request`` of a coroutine task is its own only when Celery's
    request stack is local to each greenlet (Celery's default when greenlet
    is installed, unless USE_FAST_LOCALS is set)."""
    from celery.utils import threads
    from greenlet import getcurrent

    if threads.LocalStack is not threads._LocalStack or threads.get_ident is not getcurrent:
        raise RuntimeError(
            "async tasks need Celery's greenlet-local request stack: unset "
            "USE_FAST_LOCALS (it makes self.request one per thread, shared by "
            "every coroutine of a loop)")


def _bridge_task(task):
    """Makes an ``async def`` Celery task run its coroutine in the pool's
    loop when Celery's tracer calls it (see ``_loop.bridge``). Returns
    whether the task is async. With ``autoretry_for``, Celery's retrying
    wrapper stays outside and the async function it wraps is bridged, so
    the wrapper sees the coroutine's exceptions."""
    if getattr(task, "_greenpool_async", False):
        return True
    inner = getattr(task, "_orig_run", None)
    attr = "_orig_run" if inspect.iscoroutinefunction(inner) else "run"
    fn = getattr(task, attr, None)
    if not inspect.iscoroutinefunction(fn):
        return False
    setattr(task, attr, _loop.bridge(fn))
    task._greenpool_async = True
    return True


class Hooks:
    """What the native pool calls back into Python for: raising into a
    thread (``PyThreadState_SetAsyncExc`` via ctypes), building Celery's
    exception records, and running an event loop. ``hub`` is the worker's
    event loop, if any."""

    def __init__(self, loop_settings=None):
        self.hub = None
        self.loop_settings = loop_settings or _loop.LoopSettings()
        self.watchdog = _loop.Watchdog()

    get_ident = staticmethod(threading.get_ident)
    monotonic = staticmethod(time.monotonic)
    #: Called by the native pool as set_async_exc(c_ulong(ident), None) to
    #: clear a pending exception from the task's own thread: C calls only.
    set_async_exc = staticmethod(_set_async_exc)
    c_ulong = ctypes.c_ulong

    @staticmethod
    def raise_in(ident, kind):
        exc = JobKilled if kind == "kill" else SoftTimeLimitExceeded
        _set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc))

    @staticmethod
    def failure(exc):
        if isinstance(exc, Exception):
            return _einfo(exc)
        # As Celery's apply_target: a BaseException is a lost worker.
        lost = WorkerLostError(repr(exc))
        lost.__traceback__ = exc.__traceback__
        return _einfo(lost)

    @staticmethod
    def terminated(signum):
        return _raised(Terminated(-signum))

    @staticmethod
    def time_limit(secs):
        return _raised(TimeLimitExceeded(secs))

    @staticmethod
    def lost(why):
        return _raised(WorkerLostError(why))

    @staticmethod
    def revoked(accept):
        """Whether the Celery request whose accept callback is ``accept`` was
        revoked while it waited for a slot; Celery's ``Request.revoked()``
        then announces it (REVOKED, event, ack) and the job is skipped."""
        request = getattr(accept, "__self__", None)
        return isinstance(request, _Request) and request.revoked()

    def run_loop(self, handle):
        _loop.run_loop(handle, self.loop_settings, self.watchdog, SoftTimeLimitExceeded)

    def defer(self, fun, arg):
        hub = self.hub
        if hub is not None:
            hub.call_soon(fun, arg)
        else:
            fun(arg)


def _signum(signal):
    if signal is None:
        return None
    if isinstance(signal, int):
        return signal
    from celery.platforms import signals as _signals

    return _signals.signum(signal)


def _seconds(value, what):
    """A time limit as float seconds, or None (no limit). Raises ValueError
    when it is not a number; an integer too large for a float is no limit.
    Infinite, NaN, zero, negative and too-large values are no limit too:
    the native pool turns every seconds value into a duration through one
    checked helper."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} {value!r} is not a number of seconds")
    try:
        return float(value)
    except OverflowError:
        return None


def _raise(exc):
    """The target of a task whose message cannot be run as sent."""
    raise exc


def _env_number(name, default, cast):
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


class TaskPool(BasePool):
    """Celery's eventlet ``TaskPool`` API on OS threads run by the greenpool
    core. See the module's documentation."""

    #: kombu's timer API over the greenpool core's timer (used by Celery when
    #: the broker has no event loop); entries run on the timer's thread.
    Timer = Timer

    #: Shutdown is not done from a signal handler (as eventlet and threads).
    signal_safe = False
    #: Celery must not use its green-only code paths (``gPidbox`` spawns on
    #: the pool, which this pool does not offer): its consumer stays on its
    #: own event loop, and the coroutines live in the pool's loops.
    is_green = False
    #: Joining a task's result in a task blocks one thread, not the worker.
    task_join_will_block = False
    #: Bodies are read in the worker's own process.
    body_can_be_buffer = True

    _pool = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loops = _env_number("GREENPOOL_LOOPS", 1, int)
        if not 1 <= self._loops <= 64:
            raise ValueError(f"GREENPOOL_LOOPS={self._loops}: between 1 and 64 event loops")
        self._hooks = Hooks(_loop.LoopSettings(
            kind=os.environ.get("GREENPOOL_LOOP") or "asyncio",
            block_threshold=_env_number("GREENPOOL_LOOP_BLOCK_THRESHOLD", 0.25, float),
        ))
        self._async_tasks = {}
        self._default_timeout = self.options.get("timeout")
        self._default_soft_timeout = self.options.get("soft_timeout")
        self._stack_size = _env_number("GREENPOOL_THREAD_STACK_SIZE", 1 << 20, int)
        self._idle_timeout = _env_number("GREENPOOL_THREAD_IDLE_TIMEOUT", 30.0, float)

    # ----- lifecycle ---------------------------------------------------------

    def on_start(self):
        check_celery_version()
        if self.app is not None:
            if any([_bridge_task(task) for task in list(self.app.tasks.values())]):
                _check_request_locals()
        self._pool = Pool(
            self.limit or 0,
            self._hooks,
            stack_size=self._stack_size,
            idle_timeout=self._idle_timeout,
            loops=self._loops,
        )
        self._pool.start()
        pool_started.send(sender=self)

    def on_stop(self):
        pool_preshutdown.send(sender=self)
        if self._pool is not None:
            # In a worker (app given), tasks still waiting for a slot are not
            # started at warm shutdown: their messages were not acknowledged
            # and go back to the broker (eventlet never took them: its
            # on_apply blocks while the pool is full).
            self._pool.stop(drop_queued=self.app is not None)
        self._hooks.watchdog.close()
        pool_postshutdown.send(sender=self)

    def on_close(self):
        if self._pool is not None:
            self._pool.close()

    def on_terminate(self):
        if self._pool is not None:
            self._pool.terminate()
        self._hooks.watchdog.close()

    def register_with_event_loop(self, loop):
        # Kill reports go through the loop, after Celery has announced the
        # revoke itself (as with the prefork pool).
        self._hooks.hub = loop

    # ----- applying ----------------------------------------------------------

    def on_apply(self, target, args=None, kwargs=None, callback=None,
                 accept_callback=None, error_callback=None,
                 timeout_callback=None, soft_timeout=None, timeout=None, **_):
        if pool_apply.receivers:
            pool_apply.send(sender=self, target=target, args=args, kwargs=kwargs)
        task = self._task_of(args)
        green, label = False, None
        if task is not None:
            label = (args[0], args[1])
            green = self._is_async(task)
        elif inspect.iscoroutinefunction(target):
            green = True
        try:
            timeout, soft_timeout = self._time_limits(task, args, timeout, soft_timeout)
        except ValueError as exc:
            # A limit that is not a number fails the task, with the reason,
            # through the pool's ordinary path (accepted, then FAILURE).
            target, args, kwargs = _raise, (exc,), None
            timeout = soft_timeout = None
            green = False
        return self._pool.apply(
            target,
            args,
            kwargs,
            callback=callback,
            error_callback=error_callback,
            accept_callback=accept_callback,
            timeout_callback=timeout_callback,
            soft_timeout=soft_timeout,
            timeout=timeout,
            green=green,
            label=label,
        )

    def _task_of(self, args):
        """The Celery task a tracer's args name (name, id, request, ...), or
        None when the target is not Celery's tracer."""
        app = self.app
        if (app is not None and args and len(args) >= 3
                and isinstance(args[0], str) and isinstance(args[2], dict)):
            return app.tasks.get(args[0])
        return None

    def _is_async(self, task):
        """Whether ``task`` runs as a coroutine (bridged at start, or now for
        a task registered later)."""
        known = self._async_tasks.get(task.name)
        if known is None:
            known = self._async_tasks[task.name] = _bridge_task(task)
        return known

    def _time_limits(self, task, args, timeout, soft_timeout):
        """The limits of one task in seconds: the message's, else the task's
        *current* ones, else the worker's (task_time_limit,
        task_soft_time_limit). Raises ValueError for a limit that is not a
        number; a limit too far away to be waited for is no limit.

        Celery's worker passes the task's limits as they were when the
        worker started, so that ``celery control time_limit`` would not
        reach the pool; for Celery's tracer (args: name, id, request dict,
        ...) the task's attributes are read here at apply time instead."""
        if task is not None:
            limits = args[2].get("timelimit") or (None, None)
            if not isinstance(limits, (list, tuple)):
                raise ValueError(
                    f"the message's timelimit {limits!r} is not a [hard, soft] pair")
            hard, soft = (tuple(limits) + (None, None))[:2]
            timeout = hard or task.time_limit
            soft_timeout = soft or task.soft_time_limit
        return (_seconds(timeout or self._default_timeout, "time limit"),
                _seconds(soft_timeout or self._default_soft_timeout, "soft time limit"))

    # ----- resizing and killing ----------------------------------------------

    def grow(self, n=1):
        self.limit = self._pool.grow(n)

    def shrink(self, n=1):
        self.limit = self._pool.shrink(n)

    def terminate_job(self, pid, signal=None):
        """Kills the running task ``pid``: SIGUSR1 raises
        ``SoftTimeLimitExceeded`` in it; any other signal (default SIGTERM)
        ends it at once as Celery's ``Terminated``. An unknown or finished
        pid is a no-op. Returns what happened ("killed", "exited",
        "signalled", "not-running", "unknown")."""
        if self._pool is None:
            return "unknown"
        return self._pool.terminate_job(
            pid, _signum(signal), defer=self._hooks.hub is not None
        )

    # ----- info --------------------------------------------------------------

    def _get_info(self):
        info = super()._get_info()
        if self._pool is None:
            info.update({
                "max-concurrency": self.limit,
                "free-threads": self.limit,
                "running-threads": 0,
            })
        else:
            info.update(self._pool.info())
            info.update(self._hooks.watchdog.info())
        return info

    @property
    def num_processes(self):
        return self.limit
