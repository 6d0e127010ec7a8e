"""One error policy for every command (shared/errors.py): usage errors exit 2, the user's mistakes
one line and exit 1, a fault of the run one line saying what to fix, Ctrl-C one line and exit 130,
anything else one line (the traceback with SOUNDCEPTION_DEBUG=1).

Each command is run through the real ``soundception`` group with the library call it makes
replaced by one that raises, so every command is held to the same table."""

from __future__ import annotations

import errno
import importlib

import pytest
from click.testing import CliRunner

from soundception.cli import SUBCOMMANDS, main
from soundception.shared.errors import UserError


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Files the commands' arguments must name (click checks that they exist)."""
    root = tmp_path_factory.mktemp("places")
    (root / "audio").mkdir()
    (root / "audio" / "a.wav").write_bytes(b"")
    for name in ("last.pt", "run.txt", "truth.csv", "decisions.csv"):
        (root / name).write_text("")
    from soundception.train.embeddings import open_embeddings

    open_embeddings(root / "emb.zarr", ["a.wav"], features=4, attrs={"window_seconds": 2.0, "hop_seconds": 1.0})
    return root


# command -> (arguments, the module and function it calls that is made to raise)
def commands(root) -> dict[str, tuple[list[str], str, str]]:
    return {
        "featurize": ([str(root / "audio"), "--store", str(root / "s.zarr"), "--serial"],
                      "soundception.featurize.pipeline", "featurize_store"),
        "inspect": ([str(root / "s.zarr")], "soundception.shared.reader", "FeatureStore"),
        "synth": ([str(root / "synth")], "soundception.featurize.synthetic", "make_dataset"),
        "train": (["--store", str(root / "s.zarr"), "--out", str(root / "run")], "soundception.train.loop", "train"),
        "evaluate": (["--checkpoint", str(root / "last.pt"), "--store", str(root / "s.zarr")],
                     "soundception.train.evaluate", "evaluate"),
        "predict": (["--checkpoint", str(root / "last.pt"), "--store", str(root / "s.zarr"), "--out",
                     str(root / "preds")], "soundception.train.trained", "load_trained_model"),
        "explain": (["--checkpoint", str(root / "last.pt"), "--store", str(root / "s.zarr"), "--file", "a.wav",
                     "--out", str(root / "why.png")], "soundception.train.trained", "load_trained_model"),
        "score": ([str(root / "run.txt"), str(root / "truth.csv")], "soundception.train.score", "read_run_file"),
        "fit-head": (["--checkpoint", str(root / "last.pt"), "--store", str(root / "s.zarr"), "--out",
                      str(root / "head")], "soundception.train.trained", "load_trained_model"),
        "thresholds": (["--decisions", str(root / "decisions.csv"), "--out", str(root / "t.csv")],
                       "soundception.train.thresholds", "read_decisions"),
        "calibrate": (["--checkpoint", str(root / "last.pt"), "--store", str(root / "s.zarr"), "--out",
                       str(root / "calibration.json")], "soundception.train.calibrate", "calibrate"),
        "search": (["--embeddings", str(root / "emb.zarr"), "--query", "a.wav", "--out", str(root / "found")],
                   "soundception.train.search", "query_vectors"),
        "review": ([str(root / "preds")], "soundception.review", "build_review"),
    }


FAULTS = {
    "user": (UserError("the store has no done files"), 1, "Error: the store has no done files"),
    "missing": (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.wav"), 1,
                "Error: [Errno 2] No such file or directory: 'x.wav'"),
    "disk full": (OSError(errno.ENOSPC, "No space left on device", "/data/s.zarr/image/c/0/0/0/3"), 1,
                  "Error: No space left on device writing /data/s.zarr/image/c/0/0/0/3: free some space, then rerun "
                  "the same command to go on; finished work is kept"),
    "ctrl-c": (KeyboardInterrupt(), 130, "Error: interrupted"),
    "bug": (ZeroDivisionError("division by zero"), 1,
            "Error: ZeroDivisionError: division by zero (unexpected: SOUNDCEPTION_DEBUG=1 shows the traceback; "
            "please report it)"),
}


def test_every_command_is_in_the_table(places):
    assert set(commands(places)) == set(SUBCOMMANDS)


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_command_follows_the_policy(command, fault, places, monkeypatch):
    arguments, module, function = commands(places)[command]
    error, code, line = FAULTS[fault]

    def raising(*args, **kwargs):
        raise error

    monkeypatch.setattr(importlib.import_module(module), function, raising)
    monkeypatch.delenv("SOUNDCEPTION_DEBUG", raising=False)
    result = CliRunner().invoke(main, [command, *arguments])
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    assert lines[-1].startswith(line), result.output
    assert sum(text.startswith("Error:") for text in lines) == 1 and "Traceback" not in result.output
    if fault == "bug":
        monkeypatch.setenv("SOUNDCEPTION_DEBUG", "1")
        debugged = CliRunner().invoke(main, [command, *arguments])
        assert "Traceback (most recent call last)" in debugged.output and debugged.exit_code == 1
        assert debugged.output.strip().splitlines()[-1] == lines[-1]


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_a_usage_error_exits_2(command, places):
    result = CliRunner().invoke(main, [command, *commands(places)[command][0], "--no-such-option"])
    assert result.exit_code == 2 and "No such option" in result.output and "--no-such-option" in result.output


def test_a_missing_optional_package_is_the_users_to_install_not_a_bug():
    from soundception.shared.errors import error_line

    assert error_line(ImportError("Please install gcsfs to access Google Storage")) == \
        "Please install gcsfs to access Google Storage"
    assert error_line(ImportError("cannot import name 'x' from 'y'")).endswith("please report it)")
