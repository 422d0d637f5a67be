"""greenpool: a Celery worker pool for Python tasks, run by Rust.

Select it with stock Celery::

    CELERY_CUSTOM_WORKER_POOL=greenpool.celery:TaskPool celery -A proj worker -P custom -c 1000

or ``worker_pool = "greenpool.celery:TaskPool"`` in the app's configuration.
See :mod:`greenpool.celery`.
"""
from ._greenpool import Job, Pool, PoolError, Timer, __version__

__all__ = ("Job", "Pool", "PoolError", "Timer", "__version__")
