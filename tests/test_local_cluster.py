"""The local dask cluster ``soundception featurize`` starts: worker settings, warm-up, no dashboard."""

from __future__ import annotations

import gc
import os
import sys
import time
import urllib.error
import urllib.request

import pytest

from featurize.cluster import WORKER_MALLOC, local_client


def worker_state() -> dict:
    return {"malloc": {name: os.environ.get(name) for name in WORKER_MALLOC},
            "prepared": "featurize.image" in sys.modules and gc.get_freeze_count() > 0}


def test_local_workers_get_malloc_settings_and_are_prepared_while_the_driver_waits():
    environ = dict(os.environ)
    client = local_client(1)
    try:
        assert dict(os.environ) == environ  # the nannies' variables do not leak into this process
        with pytest.raises(urllib.error.HTTPError, match="404"):  # no dashboard (bokeh) unless asked for
            urllib.request.urlopen(client.dashboard_link, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            (state,) = client.run(worker_state).values()
            if state["prepared"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert state["malloc"] == {name: str(value) for name, value in WORKER_MALLOC.items()}
        assert state["prepared"]  # prepare_worker ran as the worker's first task, without being waited for
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
