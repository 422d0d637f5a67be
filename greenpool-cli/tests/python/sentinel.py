"""A Celery user's client on Redis Sentinel, for the Sentinel tests.

Usage: python sentinel.py SENTINEL_URLS MASTER_NAME N
Sends N greenpool.add tasks through the sentinels (broker and result
backend both sentinel://), waits for every result, checks each, and
prints the task ids as JSON.
"""
import json
import sys

from celery import Celery

url, master, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = Celery("sentinel_client", broker=url, backend=url)
app.conf.broker_transport_options = {"master_name": master}
app.conf.result_backend_transport_options = {"master_name": master}

results = [app.send_task("greenpool.add", (i, i)) for i in range(n)]
for i, r in enumerate(results):
    got = r.get(timeout=60)
    assert got == 2 * i, (i, got)
print(json.dumps([r.id for r in results]))
