"""One parser for JSON options (shared.text.JSON_OBJECT): every command says the same line, exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from soundception.cli import main
from soundception.shared.text import parse_json_object


def test_parse_json_object_by_hand():
    assert parse_json_object(None) is None and parse_json_object("  ") is None
    assert parse_json_object('{"anon": true, "client_kwargs": {"region_name": "x"}}') == {
        "anon": True, "client_kwargs": {"region_name": "x"}}
    with pytest.raises(ValueError, match=r"^not JSON: Expecting property name enclosed in double quotes: "
                                         r"line 1 column 2 \(char 1\)$"):
        parse_json_object("{endpoint")
    with pytest.raises(ValueError, match="^must be a JSON object, got list$"):
        parse_json_object("[1, 2]")


@pytest.fixture
def arguments(tmp_path):
    """Each command with --storage-options, with arguments that pass click's own checks."""
    audio, checkpoint = tmp_path / "a.wav", tmp_path / "model.pt"
    audio.write_bytes(b"")
    checkpoint.write_bytes(b"")
    store = str(tmp_path / "store.zarr")
    return {
        "featurize": [str(tmp_path), "--store", store],
        "inspect": [store],
        "train": ["--store", store, "--out", str(tmp_path / "run")],
        "evaluate": ["--checkpoint", str(checkpoint), "--store", store],
        "predict": [str(audio), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")],
        "explain": [str(audio), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.png")],
    }


@pytest.mark.parametrize("command", ["featurize", "inspect", "train", "evaluate", "predict", "explain"])
@pytest.mark.parametrize(("value", "says"), [
    ("{endpoint", "not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("[1]", "must be a JSON object, got list"),
])
def test_every_command_refuses_bad_json_in_one_line_with_exit_2(arguments, command, value, says):
    result = CliRunner().invoke(main, [command, *arguments[command], "--storage-options", value])
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error_lines == [f"Error: Invalid value for '--storage-options': {says}"], result.output
    assert "Traceback" not in result.output
