"""Faults a long cluster run meets, injected for real; after each, every file's image and per-file
fields are compared with a clean run of the same audio."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from soundception.featurize import store as store_io
from soundception.featurize.lock import StoreLock, StoreLocked
from soundception.featurize.pipeline import featurize_store
from soundception.shared import FeatureStore, FeaturizerConfig

from test_cluster import same_store, wait_for_port

SMALL = FeaturizerConfig(min_duration=4.0)


@pytest.fixture
def clean_store(small_corpus, tmp_path):
    """The store a run with no fault makes, to compare against."""
    url = str(tmp_path / "clean.zarr")
    featurize_store(small_corpus, url, config=SMALL, labels="folders", time_chunk=256)
    return url


def hold_lock(url: str) -> subprocess.Popen:
    """Another process holding the store's lock, as a featurize run does, until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from soundception.featurize.lock import StoreLock
        with StoreLock({url!r}):
            print("held", flush=True)
            time.sleep(300)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parents[1])
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(
        small_corpus, tmp_path, clean_store, caplog):
    url = str(tmp_path / "s.zarr")
    holder = hold_lock(url)
    try:
        with pytest.raises(StoreLocked) as refused:
            featurize_store(small_corpus, url, config=SMALL, labels="folders", time_chunk=256)
        message = str(refused.value)
        assert f"host {socket.gethostname()}, pid {holder.pid}, started 20" in message
        assert "\n" not in message
        assert not Path(url).exists()  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock file stays behind
        holder.wait()
    assert Path(url + ".lock").exists()
    with caplog.at_level(logging.WARNING, logger="soundception.featurize"):
        featurize_store(small_corpus, url, config=SMALL, labels="folders", time_chunk=256)
    assert f"pid {holder.pid}" in caplog.text and "took over" in caplog.text
    assert not Path(url + ".lock").exists()  # released at the end of the run
    same_store(url, clean_store)


WRITER = textwrap.dedent("""
    import sys
    import zarr
    from soundception.featurize import store as store_io
    url, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    group = zarr.open_group(url, mode="r+", use_consolidated=False)
    for row in range(first, first + 2 * count, 2):  # this writer's rows interleave with the other's
        store_io.write_fields(group, {row: {"n_frames": row + 1, "duration": row / 2, "status": "done"}})
""")


def test_two_writers_racing_on_per_file_fields_lose_nothing(tmp_path):
    url = str(tmp_path / "race.zarr")
    group = store_io.open_for_writing(url, SMALL)
    store_io.register_files(group, [{"id": f"f{i:03d}.wav", "path": f"f{i:03d}.wav", "label": -1, "background": ""}
                                    for i in range(400)])
    root = Path(__file__).parents[1]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(first), "200"], cwd=root)
               for first in (0, 1)]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]
    table = FeatureStore(url).table
    assert (table["status"] == "done").sum() == 400
    assert np.array_equal(table["n_frames"], np.arange(400) + 1)
    assert np.array_equal(table["duration"], np.arange(400) / 2)


def test_a_rerun_redoes_files_marked_done_without_their_width(small_corpus, tmp_path, clean_store):
    url = str(tmp_path / "s.zarr")
    featurize_store(small_corpus, url, config=SMALL, labels="folders", time_chunk=256)
    group = zarr.open_group(url, mode="r+", use_consolidated=False)
    group["n_frames"][1] = 0  # what a lost field write left: done, width 0
    group["duration"][2] = np.nan
    summary = featurize_store(small_corpus, url, config=SMALL, labels="folders")
    assert (summary.submitted, summary.done) == (2, 2)
    assert any("2 file(s) were marked done without a width or duration" in note for note in summary.notes)
    same_store(url, clean_store)


def test_a_store_that_is_a_file_or_read_only_is_one_line(small_corpus, tmp_path):
    from click.testing import CliRunner

    from soundception.cli import main

    a_file = tmp_path / "store.zarr"
    a_file.write_text("not a store")
    result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", str(a_file), "--serial"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "is a file, not a store folder" in result.output and a_file.read_text() == "not a store"

    if os.geteuid() == 0:  # root writes anywhere: a folder under a regular file is unwritable for everyone
        place = a_file / "sub" / "s.zarr"
    else:
        locked = tmp_path / "read-only"
        locked.mkdir()
        locked.chmod(0o555)
        place = locked / "s.zarr"
    result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", str(place), "--serial"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output


def test_object_store_lock_refuses_a_live_holder_and_takes_over_a_stale_one(s3_endpoint, small_corpus):
    import s3fs

    filesystem = s3fs.S3FileSystem(**s3_endpoint)
    filesystem.mkdir("locks")
    url = "s3://locks/s.zarr"
    live = StoreLock(url, s3_endpoint, heartbeat_seconds=0.1).acquire()
    started = time.monotonic()
    try:
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}, started 20"):
            featurize_store(small_corpus, url, config=SMALL, labels="folders", storage_options=s3_endpoint)
        # older than the stale time, yet refreshed by its heartbeat (every 0.1 s; only a stall of
        # nearly 2 s could make it look stale, and slowness only makes the wait longer)
        first_beat = json.loads(filesystem.cat_file("locks/s.zarr.lock"))["heartbeat"]
        while time.monotonic() - started < 2.2 or \
                json.loads(filesystem.cat_file("locks/s.zarr.lock"))["heartbeat"] == first_beat:
            assert time.monotonic() - started < 120, "the holder's heartbeat never refreshed the lock"
            time.sleep(0.05)
        with pytest.raises(StoreLocked):
            StoreLock(url, s3_endpoint, stale_seconds=2.0).acquire()
    finally:
        live._stop.set()  # the holder vanishes without releasing (its heartbeat stops)
        live._thread.join()
    time.sleep(0.6)
    taker = StoreLock(url, s3_endpoint, stale_seconds=0.5).acquire()
    assert taker.took_over["pid"] == os.getpid()
    taker.release()
    assert not filesystem.exists("locks/s.zarr.lock")


def chunk_key(store: Path, row: int, k: int) -> Path:
    return store / "image" / "c" / str(row) / "0" / "0" / str(k)


def test_verify_names_every_bad_file_and_redo_corrupt_rewrites_exactly_those(small_corpus, tmp_path, clean_store):
    from click.testing import CliRunner

    from soundception.cli import main

    url = tmp_path / "s.zarr"
    featurize_store(small_corpus, str(url), config=SMALL, labels="folders", time_chunk=256)
    reader = FeatureStore(str(url))
    rows = {file_id: i for i, file_id in enumerate(reader.ids)}
    widths = {file_id: int(reader.table["n_frames"][i]) for file_id, i in rows.items()}
    assert widths["low/low1.wav"] <= 4 * 256 < reader.image_shape[3]  # 5 s: 4 chunks in a 5-chunk axis
    # a flipped byte, a lost object, an object left beyond a file's width
    flipped = chunk_key(url, rows["low/low0.wav"], 1)
    data = bytearray(flipped.read_bytes())
    data[1000] ^= 0x10
    flipped.write_bytes(bytes(data))
    chunk_key(url, rows["high/high0.wav"], 2).unlink()
    extra = chunk_key(url, rows["low/low1.wav"], 4)
    extra.write_bytes(chunk_key(url, rows["low/low1.wav"], 0).read_bytes())
    sound = url / "image" / "c" / str(rows["high/high1.wav"])
    untouched = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sound.rglob("*") if p.is_file()}

    result = CliRunner().invoke(main, ["inspect", str(url), "--verify"])
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("verified 4 done file(s)") and lines[0].endswith("3 bad file(s):")
    bad = dict(line.split("\t") for line in lines[1:4])
    assert bad["low/low0.wav"].startswith("columns 256-511 unreadable:") and "checksum" in bad["low/low0.wav"]
    assert bad["high/high0.wav"].startswith("1 image object(s) missing, first columns 512-767")
    assert bad["low/low1.wav"].startswith("1 image object(s) beyond its width, first columns 1024-1279")
    assert lines[-1] == (f"featurize them again with: soundception featurize {small_corpus} --store {url} "
                         "--redo-corrupt")

    result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", str(url), "--labels", "folders",
                                       "--redo-corrupt", "--serial", "--min-duration", "4"])
    assert result.exit_code == 0, result.output
    assert "featurized 3 of 3 file(s)" in result.output and "3 bad, featurized again" in result.output
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in untouched} == untouched  # the sound file: not rewritten
    assert not extra.exists()
    same_store(str(url), clean_store)
    result = CliRunner().invoke(main, ["inspect", str(url), "--verify"])
    assert result.exit_code == 0 and result.stdout.strip().endswith("all sound"), result.output


def test_a_sharded_store_holds_the_same_images_and_verify_repairs_it(small_corpus, tmp_path, clean_store):
    url = tmp_path / "sharded.zarr"
    featurize_store(small_corpus, str(url), config=SMALL, labels="folders", time_chunk=256, shard_chunks=2)
    image = zarr.open_array(str(url / "image"), mode="r")
    assert image.shards == (1, 3, 299, 512) and image.chunks == (1, 3, 299, 256)
    same_store(str(url), clean_store)
    assert len(list((url / "image" / "c" / "0" / "0" / "0").iterdir())) <= 3  # <= 1196 px: 3 objects, not 5
    shard = url / "image" / "c" / "1" / "0" / "0" / "1"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    from soundception.featurize.verify import verify_store

    empty = url / "image" / "c" / "2" / "0" / "0" / "0"
    empty.write_bytes(b"")  # an empty shard reads as black instead of failing its checksum
    first, second = verify_store(str(url)).problems
    assert first.row == 1 and first.reason.startswith("columns 512-1023 unreadable")
    assert second.row == 2 and second.reason.startswith("1 image object(s) empty (0 bytes), first columns 0-511")
    summary = featurize_store(small_corpus, str(url), config=SMALL, labels="folders", redo_corrupt=True)
    assert (summary.submitted, summary.done) == (2, 2)
    assert verify_store(str(url)).sound
    same_store(str(url), clean_store)


def test_a_worker_killed_mid_run_loses_nothing(tmp_path):
    from soundception.featurize.cluster import close_client, local_client
    from soundception.featurize.synthetic import make_dataset

    make_dataset(tmp_path / "data", n_species=2, files_per_species=4, min_seconds=10, max_seconds=30, seed=5)
    audio = tmp_path / "data" / "audio"
    clean = str(tmp_path / "clean.zarr")
    featurize_store(audio, clean, config=SMALL, labels="none")
    client = local_client(2)
    killed = []

    def kill_a_worker(summary):
        if summary.finished == 2 and not killed:  # the other worker is busy with a file: kill it mid-task
            pids = client.run(os.getpid)
            killed.append(max(pids.values()))
            os.kill(killed[0], signal.SIGKILL)

    try:
        url = str(tmp_path / "s.zarr")
        summary = featurize_store(audio, url, config=SMALL, labels="none", client=client, progress=kill_a_worker)
    finally:
        close_client(client, own_cluster=True)
    assert killed and summary.done == 8 and summary.failed == 0
    same_store(url, clean)


def test_damage_to_the_stores_own_tables_is_named_and_never_costs_done_work(small_corpus, tmp_path):
    from click.testing import CliRunner

    from soundception.cli import main

    stores = []
    for name in ("lost-status", "lost-ids", "flipped-status"):
        url = tmp_path / f"{name}.zarr"
        featurize_store(small_corpus, str(url), config=SMALL, labels="folders", time_chunk=256)
        stores.append(url)
    lost_status, lost_ids, flipped_status = stores
    (lost_status / "status" / "c" / "0").unlink()  # every file would read as pending
    result = CliRunner().invoke(main, ["inspect", str(lost_status), "--verify"])
    assert result.exit_code == 1
    assert "store\tstatus: rows 0-3 lost (4 of them hold a width and duration)" in result.stdout
    result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", str(lost_status), "--serial",
                                       "--labels", "folders", "--min-duration", "4", "--redo-corrupt"])
    assert result.exit_code == 1 and "cannot repair (nothing was rewritten)" in result.output

    objects = sorted(p for p in (lost_ids / "image").rglob("*") if p.is_file())
    (lost_ids / "file" / "c" / "0").unlink()  # the ids are gone: the rows must not be dropped
    with pytest.raises(store_io.StoreMismatch, match="4 row\\(s\\) marked done from row 0 on have no id"):
        featurize_store(small_corpus, str(lost_ids), config=SMALL, labels="folders")
    assert sorted(p for p in (lost_ids / "image").rglob("*") if p.is_file()) == objects
    assert zarr.open_array(str(lost_ids / "status"), mode="r").shape == (4,)

    chunk = flipped_status / "status" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    for args in (["inspect", str(flipped_status)], ["inspect", str(flipped_status), "--verify"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "the per-file variable 'status' cannot be read" in result.output


def test_the_lock_is_per_place_not_per_spelling(small_corpus, tmp_path):
    url = tmp_path / "s.zarr"
    holder = hold_lock(str(url))
    try:
        (tmp_path / "alias.zarr").symlink_to(url.name)
        for spelling in (tmp_path / "alias.zarr", f"{url}/", f"{url}/.", tmp_path / "x" / ".." / "s.zarr"):
            with pytest.raises(StoreLocked, match=f"pid {holder.pid}"):
                featurize_store(small_corpus, str(spelling), config=SMALL, labels="folders")
    finally:
        holder.kill()
        holder.wait()


def test_two_runs_taking_over_one_stale_object_store_lock_never_both_win(s3_endpoint):
    import json
    import threading

    import s3fs

    filesystem = s3fs.S3FileSystem(**s3_endpoint)
    filesystem.mkdir("race")
    stale = {"host": "gone-host", "pid": 1, "started": "2026-01-01T00:00:00+00:00", "heartbeat": 0.0, "token": "x"}
    for trial in range(3):
        url = f"s3://race/s{trial}.zarr"
        filesystem.pipe(f"race/s{trial}.zarr.lock", json.dumps(stale).encode())
        outcomes: list[object] = []

        def take(url: str = url, outcomes: list = outcomes) -> None:
            try:
                outcomes.append(StoreLock(url, s3_endpoint, heartbeat_seconds=0.3).acquire())
            except StoreLocked as error:
                outcomes.append(error)

        threads = [threading.Thread(target=take) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [o for o in outcomes if isinstance(o, StoreLock)]
        assert len(winners) == 1, outcomes
        winners[0].release()


def test_a_run_whose_object_store_lock_cannot_be_refreshed_stops(tmp_path):
    from conftest import free_port

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
        wait_for_port(port)
        import s3fs

        s3fs.S3FileSystem(**options).mkdir("gone")
        lock = StoreLock("s3://gone/s.zarr", options, heartbeat_seconds=0.2, stale_seconds=1.0).acquire()
        lock.check()  # fresh: fine
    finally:
        server.terminate()  # the object store becomes unreachable
        server.wait()
    time.sleep(2.0)
    with pytest.raises(StoreLocked, match="lost the store's lock .*could not be refreshed"):
        lock.check()
    lock._stop.set()


def test_credentials_in_a_url_are_refused_without_being_shown(small_corpus, tmp_path):
    from click.testing import CliRunner

    from soundception.cli import main

    for args in (["featurize", str(small_corpus), "--store", "s3://AKIAX:Secret999@bucket/s.zarr"],
                 ["featurize", "s3://AKIAX:Secret999@bucket/audio", "--store", str(tmp_path / "s.zarr")],
                 ["inspect", "http://user:Secret999@127.0.0.1:9/bucket/s.zarr"],
                 ["inspect", "s3://AKIAX:Secret999@bucket/s.zarr", "--verify"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code in (1, 2) and "Secret999" not in result.output, result.output
        assert "credentials in a URL are not accepted" in result.output
    assert not (tmp_path / "s.zarr").exists()




def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_finishes(small_corpus, clean_store, tmp_path):
    """The store sits on a real 1.2 MB tmpfs (mounted in a user and mount namespace of its own, so
    no root is needed): the disk fills part-way, the run stops with one line and no file is marked
    failed; the same command after the disk is grown finishes, with the images of a clean run."""
    import shutil

    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    saved.mkdir()
    featurize = (f"{sys.executable} -m soundception featurize {small_corpus} --store {disk}/s.zarr --labels folders "
                 f"--serial --time-chunk 256 --min-duration 4")
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=1200k none {disk} || exit 99
        {featurize} > {saved}/first.out 2>&1; echo $? > {saved}/first.rc
        cp -r {disk}/s.zarr {saved}/first.zarr
        mount -o remount,size=64m {disk}
        {featurize} > {saved}/second.out 2>&1; echo $? > {saved}/second.rc
        cp -r {disk}/s.zarr {saved}/second.zarr
    """)
    unshare = shutil.which("unshare")
    assert unshare, "this test needs util-linux's unshare (apt install util-linux)"
    result = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300)
    assert result.returncode == 0, f"could not mount a tmpfs in a namespace: {result.stderr}"
    first = (saved / "first.out").read_text()
    assert (saved / "first.rc").read_text().strip() == "1", first
    lines = first.strip().splitlines()
    assert lines[-1].startswith("Error: No space left on device writing ") and "Traceback" not in first, first
    assert lines[-1].endswith("free some space, then rerun the same command to go on; finished work is kept")
    status = FeatureStore(str(saved / "first.zarr")).table["status"].tolist()
    assert "failed" not in status and "pending" in status, status
    assert (saved / "second.rc").read_text().strip() == "0", (saved / "second.out").read_text()
    assert f"{status.count('done')} already done" in (saved / "second.out").read_text()
    same_store(str(saved / "second.zarr"), clean_store)


def test_the_object_store_refuses_a_second_create_of_the_lock_even_when_both_opened_first(s3_endpoint):
    """The lock's one primitive, against the installed s3fs and a real S3 server (moto): two
    exclusive creates both opened before either wrote (so no exists-check at open can save it);
    the second must fail at the put and leave the first's record. Fails if "xb" overwrites."""
    import s3fs

    filesystem = s3fs.S3FileSystem(**s3_endpoint)
    filesystem.mkdir("atomic")
    first = filesystem.open("atomic/s.zarr.lock", "xb")
    second = filesystem.open("atomic/s.zarr.lock", "xb")
    first.write(b'{"token": "first"}')
    first.close()
    second.write(b'{"token": "second"}')
    with pytest.raises(FileExistsError):
        second.close()
    assert filesystem.cat_file("atomic/s.zarr.lock") == b'{"token": "first"}'


def test_object_stores_without_a_proven_atomic_create_are_refused_in_one_line(small_corpus, monkeypatch):
    from click.testing import CliRunner

    from soundception.cli import main
    from soundception.featurize import lock

    for url, words in (("memory://bucket/s.zarr", "cannot lock a store on memory://"),
                       ("gs://bucket/s.zarr", "cannot lock a store on gs://")):
        result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", url, "--serial",
                                           "--labels", "folders"])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda package: "2025.5.1")
    with pytest.raises(lock.UserError, match=r"s3fs 2025.5.1 may overwrite the store's lock.*s3fs>=2025.7.0"):
        lock.check_atomic_create("s3://bucket/s.zarr")
    monkeypatch.setattr(importlib.metadata, "version", lambda package: "2025.7.0")
    lock.check_atomic_create("s3://bucket/s.zarr")  # the first release that is safe passes


def test_a_damaged_status_table_reads_the_same_to_featurize_and_inspect(small_corpus, tmp_path):
    """One byte flipped in the ``status`` chunk: featurize's rerun and inspect both say, in one line,
    which variable is damaged and what to do (not zarr's bare "Stored and computed checksum ...")."""
    from click.testing import CliRunner

    from soundception.cli import main

    store = tmp_path / "s.zarr"
    featurize_store(small_corpus, str(store), config=SMALL, labels="folders")
    chunk, = [p for p in (store / "status").rglob("*") if p.is_file() and p.name != "zarr.json"]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    runner = CliRunner()
    rerun = runner.invoke(main, ["featurize", str(small_corpus), "--store", str(store), "--serial",
                                 "--labels", "folders", "--min-duration", "4"])
    shown = runner.invoke(main, ["inspect", str(store)])
    for result in (rerun, shown):
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert lines[0].startswith(f"Error: {store}: the per-file variable 'status' cannot be read (Stored and "
                                   "computed checksum do not match"), result.output
        assert lines[0].endswith("the store's table is damaged: restore it from a copy, or featurize into a new "
                                 "store") and "unexpected" not in lines[0]
