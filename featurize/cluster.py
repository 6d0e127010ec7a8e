"""Where featurize tasks run: a local dask cluster, a running scheduler, or a batch system's jobs.

Every kind of cluster ends up as a dask ``Client`` handed to :func:`featurize.pipeline.featurize_store`;
this module only starts or connects it and tunes its workers:

* :func:`local_client`: a ``LocalCluster`` of single-threaded worker processes, one per core;
* :func:`connect`: a scheduler someone else started (``dask scheduler`` / ``dask worker``);
* :func:`batch_client`: SLURM or PBS jobs through dask-jobqueue, each job running dask workers.

Whatever the kind, :func:`register_settings` tunes the workers: every worker, including one that
joins later, gets the allocator settings of :func:`tune_worker`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin
from soundception.shared.allocator import mallopt
from soundception.shared.errors import UserError
from soundception.shared.text import parse_json_object

# what featurize_file imports on first use: workers import them as they start
FEATURIZER_MODULES = ("soundception.featurize.image", "soundfile", "soxr")

# glibc settings for featurize workers: blocks up to 32 MB come from the heap and up to 256 MB of
# freed heap is kept, so the per-chunk arrays are reused instead of mapped and faulted in anew
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": 1 << 25, "MALLOC_TRIM_THRESHOLD_": 1 << 28}

BATCH_SYSTEMS = ("slurm", "pbs")
# dask-jobqueue options that are lists of lines
LIST_OPTIONS = ("job_script_prologue", "job_extra_directives", "job_directives_skip", "worker_extra_args")


class ClusterError(UserError, RuntimeError):
    """A cluster could not be started or reached; the message is one line."""


def set_malloc(settings: dict[str, int] = WORKER_MALLOC) -> bool:
    """Apply ``settings`` to this process's allocator now (:func:`soundception.shared.allocator.mallopt`).

    A dask nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536``, so glibc hands every
    freed block of a few MB straight back to the kernel; the featurizer frees such blocks for
    every chunk and a worker then spends much of its time page-faulting (an external cluster ran
    at half the speed of our local one). ``mallopt`` overrides the environment's values in a
    running process. Returns False (and changes nothing) where the C library has no ``mallopt``.
    """
    return mallopt(settings)


def tune_worker(worker: Any = None) -> dict[str, Any]:
    """Set the allocator (:func:`set_malloc`) and stop the worker's statistical profiler (it
    samples every thread's stack every 10 ms); returns what was done, for tests and logs. Fast, so
    registering it does not hold up the driver."""
    malloc = set_malloc()
    profiler = False
    callbacks = getattr(worker, "periodic_callbacks", {}) if worker is not None else {}
    for name in ("profile", "profile-cycle"):
        if name in callbacks:
            callbacks[name].stop()
            profiler = True
    return {"malloc": malloc, "profiler_stopped": profiler, "pid": os.getpid()}


def prepare_worker() -> None:
    """Import what featurize tasks need, then exempt it all from the cyclic garbage collector.

    Sent as the first task of each worker (without waiting for it), so the imports overlap the
    driver's planning. The modules live as long as the process, yet every full collection walks
    them again, the last one at exit: ``gc.freeze()`` spares that (1.2 s -> 0.15 s for a worker
    to exit, on 2 busy cores).
    """
    for module in FEATURIZER_MODULES:
        importlib.import_module(module)
    gc.freeze()


class FeaturizeWorkerSettings(WorkerPlugin):
    """Runs :func:`tune_worker` on every worker of the cluster, now and as workers join."""

    name = "soundception-featurize-settings"
    idempotent = True

    def setup(self, worker: Any) -> None:
        worker.soundception_settings = tune_worker(worker)


def register_settings(client: Any) -> None:
    """Tune ``client``'s workers: :class:`FeaturizeWorkerSettings` on every worker (those that join
    later too) and :func:`prepare_worker` as each present worker's first task, not waited for."""
    from distributed import fire_and_forget

    client.register_plugin(FeaturizeWorkerSettings())
    for address in client.scheduler_info()["workers"]:
        fire_and_forget(client.submit(prepare_worker, key=f"prepare-worker-{address}", workers=[address],
                                      allow_other_workers=False, pure=False))


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Start processes that ignore Ctrl-C: the driver handles it and closes them.

    An ignored signal stays ignored across ``exec`` and Python keeps it so, so worker processes
    started meanwhile do not each print a traceback when the terminal sends SIGINT to the group.
    """
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to do
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def local_client(n_workers: int | None = None, *, dashboard_address: str | None = None) -> Any:
    """A dask ``Client`` on a new ``LocalCluster``: one single-threaded worker process per core.

    Workers start with :data:`WORKER_MALLOC` in their environment (instead of the nanny's
    ``MALLOC_TRIM_THRESHOLD_=65536``) and no statistical profiler; the dashboard still shows
    tasks. No dashboard unless ``dashboard_address`` (``":0"``: any free port) is given: serving
    it imports bokeh, which adds about 0.8 s to the start of every run. Measured in bench/featurize.py.
    """
    import dask
    from distributed import Client, LocalCluster

    settings = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in WORKER_MALLOC.items()}
    saved = dict(os.environ)  # nannies copy their pre-spawn variables into this process's environment
    try:
        # a value already in this environment (left by an earlier cluster, say) beats dask's config
        os.environ.update({name: str(value) for name, value in WORKER_MALLOC.items()})
        # workers log errors only: a file's failure is reported by the driver, and closing the
        # cluster after Ctrl-C would otherwise print a warning per cancelled task
        os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"
        with dask.config.set({**settings, "distributed.worker.profile.enabled": False}), _children_ignore_sigint():
            cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                                   processes=True, dashboard_address=dashboard_address)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    client = Client(cluster)
    register_settings(client)
    return client


def connect(address: str, *, timeout: float = 30.0) -> Any:
    """A ``Client`` on a running scheduler (``tcp://host:port``), its workers tuned for featurizing."""
    import dask
    from distributed import Client
    from distributed.comm import registry
    from distributed.comm.addressing import parse_address, parse_host_port

    try:  # checked first: a Client that fails half-way leaves dask's global settings pointing at it
        scheme, location = parse_address(address)
        parse_host_port(location)
        registry.get_backend(scheme)
    except ValueError as error:
        raise ClusterError(f"--scheduler {address}: not a scheduler address ({error}); expected tcp://HOST:PORT, "
                           "as `dask scheduler` prints") from None
    saved = {"scheduler": dask.config.get("scheduler", None)}
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as error:
        dask.config.set({name: value for name, value in saved.items()})  # undo what the failed Client set
        raise ClusterError(f"cannot reach the dask scheduler at {address} within {timeout:g} s "
                           f"({type(error).__name__}); is it running?") from None
    register_settings(client)
    return client


def read_cluster_config(path: str | Path | None) -> dict[str, Any]:
    """Keyword arguments for the dask-jobqueue cluster from a JSON or YAML file (``{}`` for None).

    Typical keys: ``cores``, ``processes``, ``memory``, ``walltime``, ``queue``, ``account``,
    ``job_extra_directives``, ``job_script_prologue``, ``local_directory``, ``interface``.
    """
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ClusterError(f"{path}: not UTF-8 text (byte {error.start})") from None
    try:
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = parse_json_object(text)
    except Exception as error:
        raise ClusterError(f"{path}: not a valid cluster config ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClusterError(f"{path}: a cluster config is a mapping of dask-jobqueue options")
    for name in LIST_OPTIONS:  # one line given as a string, not a list of characters
        if isinstance(data.get(name), str):
            data[name] = [data[name]]
        elif name in data and not (isinstance(data[name], list) and all(isinstance(v, str) for v in data[name])):
            raise ClusterError(f"{path}: {name} must be a list of lines")
    return data


def batch_cluster(system: str, options: dict[str, Any] | None = None) -> Any:
    """A dask-jobqueue cluster for ``system`` (``slurm`` or ``pbs``) with featurize defaults.

    Defaults (each overridable in ``options``): 1 core, 1 worker process, 4 GiB and 1 h per job;
    the job script exports :data:`WORKER_MALLOC` before starting the worker (the plugin also sets
    them at run time) and the workers' profiler is off. Nothing is submitted until ``scale``.
    """
    if system not in BATCH_SYSTEMS:
        raise ClusterError(f"unknown batch system {system!r}; choose one of {', '.join(BATCH_SYSTEMS)}")
    try:
        import dask_jobqueue
    except ImportError:
        raise ClusterError("--cluster needs dask-jobqueue: pip install 'soundception[cluster]'") from None
    kind = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[system]
    options = dict(options or {})
    prologue = [f"export {name}={value}" for name, value in WORKER_MALLOC.items()]
    prologue.append("export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False")
    options["job_script_prologue"] = prologue + list(options.get("job_script_prologue", []))
    defaults = {"cores": 1, "processes": 1, "memory": "4GiB", "walltime": "01:00:00"}
    try:
        return kind(**{**defaults, **options})
    except (TypeError, ValueError) as error:
        raise ClusterError(f"{system} cluster options: {str(error).splitlines()[0]}") from None


def batch_client(system: str, jobs: int, options: dict[str, Any] | None = None, *,
                 wait_seconds: float = 600.0) -> Any:
    """Submit ``jobs`` batch jobs and return a ``Client`` once the first worker has joined.

    Raises :class:`ClusterError` (and cancels the jobs) when no worker joins within ``wait_seconds``.
    """
    if jobs < 1:
        raise ClusterError("--jobs must be at least 1")
    from distributed import Client

    cluster = batch_cluster(system, options)
    try:
        cluster.scale(jobs=jobs)
        client = Client(cluster)
        client.wait_for_workers(1, timeout=wait_seconds)
    except Exception as error:
        cluster.close()
        if isinstance(error, TimeoutError):  # asyncio's too, since Python 3.11
            raise ClusterError(f"no worker joined within {wait_seconds:g} s after submitting {jobs} {system} "
                               "job(s); they were cancelled: check the queue and the job logs") from None
        raise ClusterError(f"{system} jobs could not be started: {type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''}") from None
    register_settings(client)
    return client


def quiet_logs() -> None:
    """Run on the workers of a cluster about to be closed: their dask logs go silent. A worker's
    heartbeat cut short by the scheduler's close is logged as an error with a traceback
    (dask/distributed#7192), which after Ctrl-C printed under the run's one-line message."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def close_client(client: Any, *, own_cluster: bool) -> None:
    """Close ``client``, and its cluster when this run started it (a ``--scheduler`` is left
    running, its workers' logs untouched)."""
    cluster = client.cluster
    if cluster is not None and own_cluster:
        with contextlib.suppress(Exception):
            client.run(quiet_logs)
    with contextlib.suppress(Exception):
        client.close()
    if cluster is not None and own_cluster:
        with contextlib.suppress(Exception):
            cluster.close()


@contextlib.contextmanager
def local_cluster(n_workers: int | None = None) -> Iterator[Any]:
    """``with local_cluster(n) as client:`` a :func:`local_client`, closed with its cluster at the end."""
    client = local_client(n_workers)
    try:
        yield client
    finally:
        close_client(client, own_cluster=True)


def start_client(*, scheduler: str | None = None, system: str = "local", jobs: int = 1,
                 cluster_options: dict[str, Any] | None = None, workers: int | None = None,
                 dashboard: bool = False, wait_seconds: float = 600.0) -> tuple[Any, bool]:
    """The client a featurize run uses, and whether the run owns (and so closes) its cluster.

    ``scheduler`` (an address) wins; otherwise ``system`` is ``local`` (``workers`` processes,
    default one per core) or a batch system (``jobs`` jobs, ``cluster_options`` from
    :func:`read_cluster_config`; ``wait_seconds`` for the first worker to join).
    """
    if scheduler:
        return connect(scheduler), False
    if system == "local":
        return local_client(workers, dashboard_address=":0" if dashboard else None), True
    return batch_client(system, jobs, cluster_options, wait_seconds=wait_seconds), True


def describe(client: Any, *, dashboard: bool) -> str:
    """One line saying where the run's tasks go and where to watch them."""
    n_workers = len(client.scheduler_info()["workers"])
    local = type(client.cluster).__name__ == "LocalCluster"
    if local and not dashboard:  # the link would name the scheduler's plain HTTP port: say so instead
        return f"dask: local cluster ({n_workers} workers); --dashboard to watch it"
    return f"dask dashboard: {client.dashboard_link}  ({n_workers} workers)"
