"""featurize on clusters it did not start: `dask scheduler` / `dask worker` processes, and batch jobs.

Everything here is real: separate scheduler and worker processes on loopback, and for the batch
systems a stand-in ``sbatch``/``qsub`` that runs the job script dask-jobqueue wrote (no batch
system runs on this machine), so the generated script itself must start working workers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from soundception.featurize.pipeline import featurize_store
from soundception.shared import FeatureStore, FeaturizerConfig
from soundception.cli import main
from conftest import free_port

BIN = Path(sys.executable).parent
SMALL = FeaturizerConfig(min_duration=4.0)




def wait_for_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"nothing listens on port {port}")


@pytest.fixture
def external_cluster():
    """`dask scheduler` and two `dask worker` processes (with nannies, dask's defaults) on loopback."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # the workers import this module for the probes below
    # dask's defaults, whatever an earlier cluster in this process left in its environment
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "env": {**environment, "PYTHONPATH": str(Path(__file__).parent)}}
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", str(port),
                                   "--no-dashboard"], **quiet)]
    try:
        wait_for_port(port)
        processes += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                        "--no-dashboard", "--host", "127.0.0.1"], **quiet) for _ in range(2)]
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def same_store(a: str, b: str) -> None:
    """Every file's image and per-file fields agree between two stores (rows matched by file id)."""
    first, second = FeatureStore(a), FeatureStore(b)
    assert sorted(first.ids) == sorted(second.ids)
    rows = {file_id: i for i, file_id in enumerate(second.ids)}
    for i, file_id in enumerate(first.ids):
        j = rows[file_id]
        for name in ("status", "n_frames", "duration", "label", "error", "warning"):
            assert first.table[name][i] == second.table[name][j], (file_id, name)
        assert np.array_equal(first.image(i), second.image(j)), file_id


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]


def allocator_probe(megabytes: int = 16) -> dict[str, int]:
    """Where glibc puts a block of ``megabytes`` and what it keeps once the block is freed (bytes).

    ``mapped``: bytes held in separately mmapped blocks while the block lives (dask's nanny
    defaults map every block over 128 KB and unmap it on free, so each chunk's arrays fault in
    anew); ``kept``: free bytes left in the heap after the free (trimmed back to the kernel under
    the nanny's 64 KB trim threshold, kept for reuse with the featurizer's settings).
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    block = libc.malloc(megabytes << 20)
    ctypes.memset(block, 1, megabytes << 20)
    mapped = libc.mallinfo2().hblkhd
    libc.free(block)
    return {"mapped": int(mapped), "kept": int(libc.mallinfo2().fordblks)}


def test_external_cluster_gets_featurize_settings_and_writes_the_same_store(external_cluster, small_corpus,
                                                                           tmp_path):
    from distributed import Client

    with Client(external_cluster) as client:
        untuned = list(client.run(allocator_probe).values())
    assert all(probe["mapped"] >= 16 << 20 and probe["kept"] < 16 << 20 for probe in untuned), untuned

    store = str(tmp_path / "cluster.zarr")
    result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", store, "--labels", "folders",
                                       "--scheduler", external_cluster, "--min-duration", "4"])
    assert result.exit_code == 0, result.output
    assert "featurized 4 of 4 file(s)" in result.output and "dask dashboard:" in result.output

    with Client(external_cluster) as client:  # the user's cluster is left running, its workers tuned
        assert len(client.scheduler_info()["workers"]) == 2
        settings = client.run(lambda dask_worker: dask_worker.soundception_settings)
        tuned = list(client.run(allocator_probe).values())
    assert all(entry["malloc"] for entry in settings.values())
    assert all(probe["mapped"] < 16 << 20 and probe["kept"] >= 16 << 20 for probe in tuned), tuned
    serial = str(tmp_path / "serial.zarr")
    featurize_store(small_corpus, serial, config=SMALL, labels="folders")
    same_store(store, serial)


def test_unreachable_scheduler_is_one_line(small_corpus, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", str(tmp_path / "s.zarr"),
                                       "--scheduler", address])
    assert result.exit_code == 1
    assert f"cannot reach the dask scheduler at {address}" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()


FAKE_SUBMIT = """#!/bin/sh
# stands in for {name}: keeps a copy of the job script and runs it as a background process group
cp "$1" {jobs}/job-$$.sh
setsid sh -c 'exec bash "$0" > "$0.log" 2>&1' {jobs}/job-$$.sh &
echo "$!{suffix}"
"""
FAKE_CANCEL = """#!/bin/sh
echo "$@" >> {jobs}/cancelled
for id in "$@"; do kill -TERM -- -"${{id%%.*}}" 2>/dev/null; done
exit 0
"""


@pytest.fixture
def batch_system(tmp_path, monkeypatch):
    """Stand-in submit and cancel commands for SLURM and PBS on PATH; returns the folder of job scripts."""
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    for name, suffix in (("sbatch", ""), ("qsub", ".pbs-server")):
        (bin_dir / name).write_text(FAKE_SUBMIT.format(name=name, jobs=jobs, suffix=suffix))
    for name in ("scancel", "qdel"):
        (bin_dir / name).write_text(FAKE_CANCEL.format(jobs=jobs))
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield jobs
    for log in jobs.glob("*.sh"):  # belt and braces: no worker outlives the test
        subprocess.run(["pkill", "-f", str(log)], check=False)


@pytest.mark.parametrize("system, directive", [("slurm", "#SBATCH"), ("pbs", "#PBS")])
def test_job_script_names_the_queue_and_tunes_the_workers(system, directive, tmp_path):
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps({"queue": "birds", "account": "lab42", "cores": 4, "processes": 4,
                                  "memory": "16GiB", "walltime": "02:00:00"}))
    result = CliRunner().invoke(main, ["featurize", str(tmp_path), "--store", str(tmp_path / "s.zarr"),
                                       "--cluster", system, "--jobs", "3", "--cluster-config", str(config),
                                       "--print-job-script"])
    assert result.exit_code == 0, result.output
    script = result.output
    assert script.startswith("#!/usr/bin/env bash")
    assert f"{directive} -q birds" in script or f"{directive} -p birds" in script
    assert "lab42" in script and "02:00:00" in script
    assert "export MALLOC_TRIM_THRESHOLD_=268435456" in script and "export MALLOC_MMAP_THRESHOLD_=33554432" in script
    assert f"{sys.executable} -m distributed.cli.dask_worker tcp://" in script
    assert "--nthreads 1 " in script and "--nworkers 4 " in script  # 4 cores: 4 single-threaded processes
    submit = {"slurm": "sbatch", "pbs": "qsub"}[system]
    assert f"# submitted with: {submit} <job script>   (x 3: one per job)" in script
    assert not (tmp_path / "s.zarr").exists()  # nothing was written or submitted


def test_slurm_jobs_run_the_generated_script_and_featurize(batch_system, small_corpus, tmp_path):
    store = str(tmp_path / "slurm.zarr")
    config = tmp_path / "cluster.yaml"
    config.write_text("walltime: '00:10:00'\nmemory: 2GiB\nscheduler_options: {host: 127.0.0.1}\n")
    result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", store, "--labels", "folders",
                                       "--cluster", "slurm", "--jobs", "2", "--cluster-config", str(config),
                                       "--min-duration", "4"])
    assert result.exit_code == 0, result.output
    scripts = sorted(batch_system.glob("job-*.sh"))
    assert len(scripts) == 2 and all("#SBATCH" in s.read_text() for s in scripts)
    assert "featurized 4 of 4 file(s)" in result.output
    # the run owned its jobs: they were cancelled at the end
    deadline = time.monotonic() + 30
    while not (batch_system / "cancelled").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len((batch_system / "cancelled").read_text().split()) == 2
    serial = str(tmp_path / "serial.zarr")
    featurize_store(small_corpus, serial, config=SMALL, labels="folders")
    same_store(store, serial)


def test_jobs_that_never_start_are_cancelled_with_one_line(tmp_path, small_corpus, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'Submitted batch job 77'\n")  # queued forever
    (bin_dir / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/cancelled\n")
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", str(tmp_path / "s.zarr"),
                                       "--cluster", "slurm", "--jobs", "1", "--worker-wait", "3"])
    assert result.exit_code == 1
    assert "no worker joined within 3 s after submitting 1 slurm job(s)" in result.output
    assert (tmp_path / "cancelled").read_text().split() == ["77"]
    assert not (tmp_path / "s.zarr").exists()


HOLD_PRELOAD = """
# dask worker preload: the file named by SOUNDCEPTION_TEST_HOLD is decoded only once the file named
# by SOUNDCEPTION_TEST_RELEASE exists, so a run cannot finish before the test lets it
import os
import time

import soundception.featurize.pipeline as pipeline

_decode = getattr(pipeline.decode, "unheld", pipeline.decode)  # dask may run a preload more than once


def _held_decode(source, **options):
    if str(source) == os.environ["SOUNDCEPTION_TEST_HOLD"]:
        while not os.path.exists(os.environ["SOUNDCEPTION_TEST_RELEASE"]):
            time.sleep(0.05)
    return _decode(source, **options)


_held_decode.unheld = _decode
pipeline.decode = _held_decode
"""


def test_ctrl_c_prints_one_line_and_the_rerun_keeps_finished_files(tmp_path):
    from soundception.featurize.synthetic import make_dataset

    make_dataset(tmp_path / "data", n_species=2, files_per_species=10, min_seconds=20, max_seconds=40, seed=3)
    audio = tmp_path / "data" / "audio"
    held = sorted(audio.rglob("*.wav"))[0]
    preload = tmp_path / "hold_one_file.py"
    preload.write_text(HOLD_PRELOAD)
    release = tmp_path / "release"
    environment = {**os.environ, "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(preload)]),
                   "SOUNDCEPTION_TEST_HOLD": str(held), "SOUNDCEPTION_TEST_RELEASE": str(release)}
    store = tmp_path / "s.zarr"
    command = [str(BIN / "soundception"), "featurize", str(audio), "--store", str(store),
               "--workers", "2", "--labels", "none"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env=environment)
    try:
        deadline = time.monotonic() + 120  # a bound on a hang, not a wait on speed: the held file keeps it running
        while time.monotonic() < deadline:  # wait until some files are done
            time.sleep(0.5)
            try:
                if (FeatureStore(str(store)).table["status"] == "done").sum() >= 2:
                    break
            except Exception:
                pass
        assert process.poll() is None, "the run ended while one of its files was held"
        os.killpg(process.pid, signal.SIGINT)  # as a terminal does: the whole process group
        output, _ = process.communicate(timeout=60)
    finally:
        release.touch()  # whatever happened, no worker waits on after the test
    assert process.returncode == 130, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert lines[-1].startswith("Error: interrupted: files finished so far are kept")
    done = FeatureStore(str(store)).table["status"] == "done"
    assert 2 <= done.sum() < 20
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{int(done.sum())} already done, skipped" in rerun.stdout
    assert (FeatureStore(str(store)).table["status"] == "done").all()


def test_a_locked_store_is_refused_before_any_job_is_submitted(batch_system, small_corpus, tmp_path):
    from test_store_faults import hold_lock

    store = tmp_path / "s.zarr"
    holder = hold_lock(str(store))
    try:
        result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", str(store),
                                           "--cluster", "slurm", "--jobs", "2"])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1 and f"pid {holder.pid}" in result.output
    assert not list(batch_system.glob("job-*.sh"))  # nothing was submitted


def test_bad_scheduler_addresses_and_cluster_configs_are_one_line(small_corpus, tmp_path):
    for address in ("nonsense", "tcp://[::1"):
        result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", str(tmp_path / "s.zarr"),
                                           "--scheduler", address])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert "not a scheduler address" in result.output
    config = tmp_path / "cluster.yaml"
    config.write_text("job_script_prologue: module load birds\njob_extra_directives: --exclusive\n")
    result = CliRunner().invoke(main, ["featurize", str(tmp_path), "--cluster", "slurm", "--cluster-config",
                                       str(config), "--print-job-script"])
    assert result.exit_code == 0, result.output
    assert "\nmodule load birds\n" in result.output and "#SBATCH --exclusive\n" in result.output
    config.write_bytes("queue: v\xf6gel\n".encode("latin-1"))
    result = CliRunner().invoke(main, ["featurize", str(tmp_path), "--cluster", "slurm", "--cluster-config",
                                       str(config), "--print-job-script"])
    assert result.exit_code == 1 and "not UTF-8 text" in result.output and "Traceback" not in result.output
