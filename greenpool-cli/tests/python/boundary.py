"""Python side of the boundary test: what a Celery user sends that is
hard to read (numbers beyond 64 bits, float('nan'), time limits no clock
can carry, local-time offsets) and what AsyncResult.get() must give back.

Usage: python boundary.py BROKER_URL
Prints one line per check and OK; a failed assertion exits non-zero.
"""
import datetime
import sys
from zoneinfo import ZoneInfo

from celery import Celery, signature
from celery.exceptions import TaskRevokedError

url = sys.argv[1]
app = Celery("boundary", broker=url, backend=url)
T = 20  # seconds any single result may take


def raises(result, kind, needle):
    try:
        value = result.get(timeout=T)
    except Exception as e:  # noqa: BLE001 - the type is checked below
        assert type(e).__name__ == kind, (type(e), e)
        assert needle in str(e), e
        assert result.state == "FAILURE", result.state
        return e
    raise AssertionError(f"expected {kind}, got the value {value!r}")


# int + int is exact at any size, as in Python.
big = 2**200
assert app.send_task("greenpool.add", (big, 1)).get(timeout=T) == big + 1
assert app.send_task("greenpool.add", (-big, big)).get(timeout=T) == 0
print("2**200 + 1 exact")

# Python's json writes NaN for float('nan'): a visible failure.
e = raises(app.send_task("greenpool.add", (float("nan"), 1)), "DecodeError", "NaN")
print("NaN argument:", type(e).__name__)

# Time limits no clock can carry: a visible failure, never a hang.
raises(app.send_task("greenpool.add", (1, 2), time_limit=1e20), "ValueError", "out of range")
raises(app.send_task("greenpool.add", (1, 2), soft_time_limit=1e19), "ValueError", "out of range")
print("time_limit=1e20 and soft_time_limit=1e19 fail visibly")

# A link the worker cannot send fails the task, as apply_async would.
link = signature("greenpool.echo", countdown=1e19)
raises(app.send_task("greenpool.echo", (1,), link=link), "ValueError", "link countdown")
print("link countdown=1e19 fails visibly")

# enable_utc off: Celery writes ETAs and expiries in local time with an
# offset other than UTC.
local = Celery("boundary-local", broker=url, backend=url)
local.conf.enable_utc = False
local.conf.timezone = "Asia/Kolkata"
r = local.send_task("greenpool.add", (40, 2), countdown=0.2)
assert r.get(timeout=T) == 42
past = datetime.datetime.now(ZoneInfo("Pacific/Honolulu")) - datetime.timedelta(minutes=5)
r = local.send_task("greenpool.add", (1, 2), expires=past)
try:
    r.get(timeout=T)
except TaskRevokedError as e:
    assert "expired" in str(e), e
else:
    raise AssertionError("a task that expired in -10:00 local time ran")
print("offsets +05:30 and -10:00 honoured")

# The worker serves on.
assert app.send_task("greenpool.add", (2, 3)).get(timeout=T) == 5
print("OK")
