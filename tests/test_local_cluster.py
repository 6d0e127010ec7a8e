"""The local dask cluster ``soundception featurize`` starts: worker settings, warm-up, no dashboard."""

from __future__ import annotations

import gc
import os
import sys
import time
import urllib.error
import urllib.request

import pytest

from soundception.featurize.cluster import WORKER_MALLOC, local_client


def worker_state() -> dict:
    return {"malloc": {name: os.environ.get(name) for name in WORKER_MALLOC},
            "prepared": "soundception.featurize.image" in sys.modules and gc.get_freeze_count() > 0}


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


def test_closing_its_own_cluster_silences_the_workers_logs_first_and_a_given_cluster_keeps_them(tmp_path):
    """A worker's heartbeat cut short by the scheduler's close logs a traceback; after Ctrl-C it
    printed under the run's one line. Workers of a cluster the run owns are silenced before the
    close; those of a cluster given with ``--scheduler`` keep their logging."""
    from distributed import Client, LocalCluster, WorkerPlugin

    from soundception.featurize.cluster import close_client

    class RecordLogLevelAtClose(WorkerPlugin):  # defined here: shipped to the workers by value
        """Writes the worker's ``distributed.worker`` log level to a file as the worker closes."""

        name = "record-log-level"

        def __init__(self, path: str) -> None:
            self.path = path

        def teardown(self, worker) -> None:
            import logging

            with open(self.path, "a") as out:
                out.write(logging.getLevelName(logging.getLogger("distributed.worker").getEffectiveLevel()) + "\n")

    levels = tmp_path / "levels"
    client = local_client(2)
    client.register_plugin(RecordLogLevelAtClose(str(levels)))
    close_client(client, own_cluster=True)
    assert levels.read_text().split() == ["CRITICAL", "CRITICAL"]

    def level() -> int:
        import logging

        return logging.getLogger("distributed.worker").getEffectiveLevel()

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        given = Client(cluster.scheduler_address)  # as with --scheduler: the run does not own it
        before = given.run(level)
        close_client(given, own_cluster=False)
        with Client(cluster.scheduler_address) as other:
            assert other.run(level) == before and all(value < 50 for value in before.values())
