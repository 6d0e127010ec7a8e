"""Featurize throughput on clusters: the local cluster, a separately started scheduler with 1 and 2
worker processes (with and without the worker settings featurize registers), and a store on an
S3-compatible server on loopback against one on local disk.

Every configuration featurizes the same generated corpus into a fresh store; each is run
``--repeats`` times, interleaved, on a cluster started for that run alone (warmed up on two short
files first), and the median wall time is reported with the ratio to the local cluster measured
in the same run. The external cluster is ``dask scheduler`` plus
``dask worker --nthreads 1`` processes with dask's defaults (nannies, trim threshold 64 KB);
"bare" connects to it with a plain ``Client``, as a user would without our settings.

    python bench/scale.py [--files 40] [--seconds 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


import numpy as np
import soundfile

BIN = Path(sys.executable).parent


def make_corpus(root: Path, files: int, seconds: float) -> Path:
    """``files`` recordings of ``seconds`` s at 44.1 kHz (so every file is resampled): chirps over noise."""
    rate = 44100
    audio = root / "audio"
    audio.mkdir(parents=True)
    t = np.arange(int(seconds * rate)) / rate
    for k in range(files):
        rng = np.random.default_rng(k)
        chirp = 0.3 * np.sin(2 * np.pi * (1500 + 400 * k % 3000) * t + 20 * np.sin(2 * np.pi * 0.5 * t))
        soundfile.write(audio / f"rec{k:03d}.wav", (chirp + 0.05 * rng.standard_normal(t.size)).astype(np.float32),
                        rate, subtype="PCM_16")
    return audio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


class ExternalCluster:
    """``dask scheduler`` and ``n`` ``dask worker`` processes, as a user starts them."""

    def __init__(self, n_workers: int) -> None:
        from distributed import Client

        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        # dask's defaults, whatever an earlier cluster in this process left in its environment
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": environment}
        self.processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                            str(port), "--no-dashboard"], **quiet)]
        wait_for_port(port)
        self.processes += [subprocess.Popen([str(BIN / "dask"), "worker", self.address, "--nthreads", "1",
                                             "--no-dashboard", "--host", "127.0.0.1"], **quiet)
                           for _ in range(n_workers)]
        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=120)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            process.wait(timeout=60)


class MotoServer:
    def __init__(self) -> None:
        port = free_port()
        self.process = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port)
        self.options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench"}
        import s3fs

        s3fs.S3FileSystem(**self.options).mkdir("bench")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def timed(audio: Path, store: str, client, storage_options=None) -> float:
    from soundception.featurize.pipeline import featurize_store

    wall = time.perf_counter()
    summary = featurize_store(audio, store, labels="none", client=client, storage_options=storage_options)
    wall = time.perf_counter() - wall
    assert summary.done == summary.submitted and summary.failed == 0, summary.lines()
    return wall


def configurations(moto: MotoServer):
    """``{name: start()}``; ``start()`` returns ``(client, store options, close)``. One cluster
    runs at a time: idle clusters beside the measured one cost it a third of its speed here."""
    from distributed import Client

    from soundception.featurize.cluster import connect, local_client

    def local(options=None):
        def start():
            client = local_client(2)
            return client, options, lambda: (client.close(), client.cluster.close())
        return start

    def external(n_workers: int, tuned: bool = True):
        def start():
            cluster = ExternalCluster(n_workers)
            client = connect(cluster.address) if tuned else Client(cluster.address)
            return client, None, lambda: (client.close(), cluster.close())
        return start

    return {
        "local cluster, 2 workers": local(),
        "dask scheduler + 1 worker": external(1),
        "dask scheduler + 2 workers": external(2),
        "dask scheduler + 2 workers, bare Client (no settings)": external(2, tuned=False),
        "local cluster, 2 workers, store on S3 (moto)": local(moto.options),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="soundception-scale-"))
    audio = make_corpus(root / "corpus", args.files, args.seconds)
    warm = make_corpus(root / "warm", 2, 5.0)
    hours = args.files * args.seconds / 3600
    moto = MotoServer()
    configs = configurations(moto)
    walls: dict[str, list[float]] = {name: [] for name in configs}
    try:
        for repeat in range(args.repeats):
            for k, (name, start) in enumerate(configs.items()):
                client, options, close = start()
                try:
                    prefix = f"s3://bench/{repeat}-{k}" if options else str(root / f"{repeat}-{k}")
                    timed(warm, f"{prefix}-warm.zarr", client, options)  # every worker imports the featurizer
                    walls[name].append(timed(audio, f"{prefix}.zarr", client, options))
                finally:
                    close()
    finally:
        moto.close()
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(walls["local cluster, 2 workers"])
    print(f"\n{args.files} files x {args.seconds:g} s ({hours:.2f} h of audio), {args.repeats} repeats, "
          f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"{'configuration':56s} {'wall s (median)':>16s} {'spread':>12s} {'audio h/s':>10s} {'vs local':>9s}")
    for name, values in walls.items():
        median = statistics.median(values)
        print(f"{name:56s} {median:16.2f} {min(values):5.2f}-{max(values):5.2f} {hours / median:10.4f} "
              f"{base / median:8.2f}x")
    scaling = statistics.median(walls["dask scheduler + 1 worker"]) / statistics.median(
        walls["dask scheduler + 2 workers"])
    print(f"scaling 1 -> 2 external workers: {scaling:.2f}x (efficiency {scaling / 2:.0%})")


if __name__ == "__main__":
    main()
