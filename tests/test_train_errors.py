"""Faults in what train and evaluate are given, each stopped with one line and a non-zero exit:
stores with nothing to use, paths that are not stores, an unwritable run folder, a corrupt image
chunk (named by file and columns), and Ctrl-C (with what to rerun)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from conftest import write
from soundception.featurize.pipeline import featurize_store
from soundception.featurize.synthetic import make_dataset
from soundception.shared.config import FeaturizerConfig
from soundception.shared.reader import CorruptChunk, FeatureStore
from soundception.train.augment import AugmentConfig, read_width
from soundception.train.checkpoint import load_checkpoint
from soundception.train.cli import evaluate_command, train_command
from soundception.train.config import RunConfig, StageConfig, crop_width_px
from soundception.train.dataset import WindowSampler, split_files
from soundception.train.loop import train

REPO = Path(__file__).resolve().parents[1]
BACKBONE = "test_efficientnet"
CONFIG = FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=4.0)
TIME_CHUNK = 256  # px per image chunk: a 4-6 s image (341-512 px) spans two chunks
TINY = ["--backbone", BACKBONE, "--crop-seconds", "2", "--attention-hidden", "16", "--augment", "none",
        "--stage1-steps", "1", "--stage1-batch-size", "2", "--stage2-steps", "1", "--stage2-batch-size", "2",
        "--eval-every", "0", "--no-progress", "--validation-fraction", "0.34"]


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("errors")
    info = make_dataset(root / "data", n_species=3, files_per_species=3, min_seconds=4.0, max_seconds=6.0, seed=4)
    featurize_store(info["paths"]["audio"], str(root / "s.zarr"), config=CONFIG, metadata=info["paths"]["labels"],
                    labels="csv", time_chunk=TIME_CHUNK)
    return str(root / "s.zarr")


@pytest.fixture(scope="module")
def checkpoint(store_url, tmp_path_factory) -> Path:
    """A 2-step run on the store (3 validation files)."""
    out = tmp_path_factory.mktemp("run") / "run"
    config = RunConfig(store=store_url, out=str(out), backbone=BACKBONE, crop_seconds=2.0, attention_hidden=16,
                       validation_fraction=0.34, augment=AugmentConfig.from_spec("none"),
                       stage1=StageConfig(steps=1, batch_size=2, lr=1e-3, warmup_steps=0, train_backbone=False),
                       stage2=StageConfig(steps=1, batch_size=2, lr=1e-3, warmup_steps=0, train_backbone=True),
                       num_workers=0, eval_every=0, checkpoint_every=0)
    return Path(train(config, progress=False)["checkpoint"])


def copy_store(store_url: str, target: Path) -> Path:
    shutil.copytree(store_url, target)
    return target


def corrupt(store: Path, row: int, time_chunk: int) -> None:
    """Flip one byte in the middle of image chunk ``(row, 0, 0, time_chunk)`` (as test_store does)."""
    chunk = store / "image" / "c" / str(row) / "0" / "0" / str(time_chunk)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def one_error_line(result) -> str:
    """The single ``Error: ...`` line a failed command wrote to stderr (nothing else there, no traceback)."""
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


# ---------------------------------------------------------------------------------------------- nothing to use


def test_evaluate_refuses_a_store_with_no_done_file(store_url, checkpoint, tmp_path):
    store = copy_store(store_url, tmp_path / "pending.zarr")
    status = zarr.open_array(str(store / "status"), mode="r+")
    status[:] = np.array(["pending"] * status.shape[0])  # an interrupted featurize: no file finished
    runner = CliRunner()
    line = one_error_line(runner.invoke(evaluate_command, ["--checkpoint", str(checkpoint), "--store", str(store),
                                                           "--files", "all"]))
    assert line == f"Error: {store} has no labelled file with status 'done' to evaluate"
    line = one_error_line(runner.invoke(evaluate_command, ["--checkpoint", str(checkpoint), "--store", str(store)]))
    assert line == f"Error: none of the run's 3 validation files is done in {store}"


def test_evaluate_refuses_a_run_without_validation_files(store_url, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(train_command, ["--store", store_url, "--out", str(out), *TINY,
                                                "--validation-fraction", "0", "--workers", "0"])
    assert result.exit_code == 0, result.output
    line = one_error_line(CliRunner().invoke(evaluate_command, ["--checkpoint", str(out / "checkpoints" / "last.pt"),
                                                                "--store", store_url]))
    assert "the run has no validation files" in line and "--files all" in line


def test_train_refuses_a_store_with_no_usable_file(tmp_path):
    for label in ("a", "b"):
        write(tmp_path / "audio" / label / "x.wav", np.zeros(0, np.float32))  # fails to featurize
    summary = featurize_store(tmp_path / "audio", str(tmp_path / "s.zarr"), config=CONFIG, labels="folders")
    assert (summary.done, summary.failed) == (0, 2)
    line = one_error_line(CliRunner().invoke(train_command, ["--store", str(tmp_path / "s.zarr"),
                                                             "--out", str(tmp_path / "run"), *TINY]))
    assert line == f"Error: {tmp_path / 's.zarr'} has no labelled file with status 'done' to train on"


# ---------------------------------------------------------------------------------------------- bad paths


def test_a_store_that_is_a_file_or_missing_gets_one_line(checkpoint, tmp_path):
    regular = tmp_path / "notes.txt"
    regular.write_text("not a store\n")
    runner = CliRunner()
    for store, reason in ((regular, "it is a file, not a store folder"),
                          (tmp_path / "missing.zarr", "no such file or folder")):
        expected = f"Error: {store} is not a readable Zarr feature store: {reason}"
        assert one_error_line(runner.invoke(train_command, ["--store", str(store), "--out",
                                                            str(tmp_path / "run"), *TINY])) == expected
        assert one_error_line(runner.invoke(evaluate_command, ["--checkpoint", str(checkpoint),
                                                               "--store", str(store)])) == expected
    assert not (tmp_path / "run").exists()  # refused before making the run folder


def test_an_unwritable_run_folder_gets_one_line(store_url, tmp_path):
    blocker = tmp_path / "plain_file"
    blocker.write_text("")
    places = [blocker / "run"]  # a folder under a regular file: refused for root too
    if os.geteuid() != 0:  # root ignores permission bits
        read_only = tmp_path / "read_only"
        read_only.mkdir()
        read_only.chmod(0o500)
        places.append(read_only / "run")
    for out in places:
        line = one_error_line(CliRunner().invoke(train_command, ["--store", store_url, "--out", str(out), *TINY]))
        assert line.startswith(f"Error: cannot write the run folder {out}: "), line


# ---------------------------------------------------------------------------------------------- corrupt chunks


def test_a_corrupt_chunk_is_named_by_file_and_columns(store_url, tmp_path):
    store = copy_store(store_url, tmp_path / "s.zarr")
    reader = FeatureStore(str(store))
    row = int(np.argmax(reader.table["n_frames"]))
    width = int(reader.table["n_frames"][row])
    assert width > TIME_CHUNK
    corrupt(store, row, 1)  # columns 256..width-1 of that file
    expected = f"corrupt chunk in {store}: file {reader.ids[row]} (row {row}), columns {TIME_CHUNK}-{width - 1}: "
    for read in (lambda: reader.image(row), lambda: reader.window(row, TIME_CHUNK - 10, 20),
                 lambda: reader.window(row, width - 5, 300)):
        with pytest.raises(CorruptChunk) as failed:
            read()
        assert str(failed.value).startswith(expected) and "checksum do not match" in str(failed.value)
        assert str(failed.value).endswith(f"; run soundception inspect {store} --verify to list every damaged "
                                          f"file (featurize --redo-corrupt rewrites them)")
        assert isinstance(failed.value, ValueError)  # what zarr raised before: callers catching that still do
    assert reader.window(row, 0, TIME_CHUNK).shape == (3, 64, TIME_CHUNK)  # the first chunk still reads
    other = (row + 1) % reader.n_files
    assert reader.image(other).shape[-1] == reader.table["n_frames"][other]
    from soundception.featurize.cli import inspect_command  # the advice holds: --verify names the file

    verified = CliRunner().invoke(inspect_command, [str(store), "--verify"])
    assert verified.exit_code == 1 and str(reader.ids[row]) in verified.output


def test_evaluate_stops_at_a_corrupt_chunk_naming_it(store_url, checkpoint, tmp_path):
    store = copy_store(store_url, tmp_path / "s.zarr")
    row = json.loads((checkpoint.parent.parent / "split.json").read_text())["validation"][1]
    corrupt(store, row, 0)
    line = one_error_line(CliRunner().invoke(evaluate_command, ["--checkpoint", str(checkpoint),
                                                                "--store", str(store)]))
    file_id = FeatureStore(str(store)).ids[row]
    assert line.startswith(f"Error: corrupt chunk in {store}: file {file_id} (row {row}), columns 0-255: "), line


@pytest.mark.parametrize("workers", [0, 1])
def test_train_stops_at_a_corrupt_chunk_naming_it(store_url, tmp_path, workers):
    store = copy_store(store_url, tmp_path / "s.zarr")
    reader = FeatureStore(str(store))
    out = tmp_path / "run"
    # the first window of step 0, as the run's split and sampler draw it; all its file's chunks damaged
    split = split_files(reader, validation_fraction=0.34, seed=0)
    crop = crop_width_px(2.0, reader.config)
    sampler = WindowSampler(reader, np.array(split.train), batch_size=2, stop_step=1, seed=0,
                            read_width=read_width(crop, AugmentConfig.from_spec("none")))
    row, start = sampler.batch(0)[0]
    width = int(reader.table["n_frames"][row])
    for time_chunk in range(-(-width // TIME_CHUNK)):
        corrupt(store, row, time_chunk)
    line = one_error_line(CliRunner().invoke(train_command, ["--store", str(store), "--out", str(out), *TINY,
                                                             "--workers", str(workers)]))
    first = start - start % TIME_CHUNK
    assert line.startswith(f"Error: corrupt chunk in {store}: file {reader.ids[row]} (row {row}), columns "
                           f"{first}-{min(first + TIME_CHUNK, width) - 1}: "), line
    assert "Traceback" not in line and "DataLoader" not in line


# ---------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_train_says_where_it_stopped_and_what_to_rerun(store_url, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "soundception", "train", "--store", store_url, "--out", str(out), *TINY,
               "--stage2-steps", "10000", "--checkpoint-every", "2", "--log-every", "1", "--workers", "0"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    match = re.fullmatch(r"Error: interrupted at step (\d+); (.+) holds step (\d+): rerun the same command with "
                         r"--resume to continue from there", lines[0])
    assert match, lines[0]
    stopped, path, saved = int(match[1]), Path(match[2]), int(match[3])
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert path == out / "checkpoints" / "last.pt" and load_checkpoint(path)["step"] == saved
    assert saved % 2 == 0 and 2 <= saved <= stopped and max(logged) in (stopped, stopped - 1)


def test_ctrl_c_during_evaluate_says_nothing_was_written(checkpoint, store_url, tmp_path, monkeypatch):
    import soundception.train.evaluate as evaluate_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "evaluate_model", interrupted)
    result = CliRunner().invoke(evaluate_command, ["--checkpoint", str(checkpoint), "--store", store_url,
                                                   "--out", str(tmp_path / "report.json")])
    assert result.exit_code == 130
    assert result.output.strip() == ("Error: interrupted: no report written; rerun the same command "
                                     "(evaluation starts over)")
    assert not (tmp_path / "report.json").exists()
