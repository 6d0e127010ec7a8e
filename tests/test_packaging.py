"""Installed from its wheel, the project adds one top-level name, ``soundception``, and every command
runs from a folder that holds its own ``train.py``, ``featurize.py`` and ``shared/`` package.

The wheel is built from this checkout and installed with ``pip --target`` into a folder; commands
run in ``python -S`` (no site-packages, so not the editable install) with that folder and this
environment's site-packages (for numpy, torch, ...) on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = "raise SystemExit('a foreign {name} was imported instead of soundception.{name}')\n"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The folder the wheel was installed into."""
    work = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(work / "dist"), str(ROOT)], check=True,
                   capture_output=True)
    wheel, = (work / "dist").glob("soundception-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(work / "tree"), str(wheel)],
                   check=True, capture_output=True)
    return work / "tree"


@pytest.fixture
def foreign_folder(tmp_path) -> Path:
    """A working folder whose own modules carry the generic names the project must not claim."""
    for name in ("train", "featurize"):
        (tmp_path / f"{name}.py").write_text(FOREIGN.format(name=name))
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "__init__.py").write_text(FOREIGN.format(name="shared"))
    return tmp_path


def run(installed: Path, cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), sysconfig.get_paths()["purelib"]])}
    result = subprocess.run([sys.executable, "-S", *arguments], cwd=cwd, env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{arguments}:\n{result.stdout}\n{result.stderr}"
    return result


def test_the_wheel_installs_one_top_level_name(installed):
    names = {p.name for p in installed.iterdir() if p.name != "bin" and not p.name.endswith(".dist-info")}
    assert names == {"soundception"}
    assert {p.name for p in (installed / "soundception").iterdir() if p.is_dir()} >= {"featurize", "train", "shared"}


def test_every_command_runs_beside_a_foreign_train_featurize_and_shared(installed, foreign_folder):
    """synth -> featurize -> inspect -> train -> evaluate -> predict (audio) -> score -> explain."""
    from soundception.shared.config import FeaturizerConfig

    folder = foreign_folder
    small = FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=4.0)
    (folder / "config.json").write_text(json.dumps(small.to_dict()))
    sc = ["-m", "soundception"]
    run(installed, folder, *sc, "synth", "data", "--species", "2", "--files-per-species", "3",
        "--min-seconds", "3", "--max-seconds", "5", "--seed", "1")
    featurized = run(installed, folder, *sc, "featurize", "data/audio", "--store", "s.zarr", "--metadata",
                     "data/labels.csv", "--config", "config.json", "--serial")
    assert "featurized 6 of 6" in featurized.stdout + featurized.stderr
    assert "6: 6 done, 0 failed" in run(installed, folder, *sc, "inspect", "s.zarr").stdout
    run(installed, folder, *sc, "train", "--store", "s.zarr", "--out", "run", "--backbone", "test_efficientnet",
        "--crop-seconds", "2", "--attention-hidden", "16", "--augment", "none", "--stage1-steps", "1",
        "--stage1-batch-size", "2", "--stage2-steps", "1", "--stage2-batch-size", "2", "--eval-every", "0",
        "--no-progress", "--validation-fraction", "0.34", "--workers", "0")
    checkpoint = "run/checkpoints/last.pt"
    run(installed, folder, *sc, "evaluate", "--checkpoint", checkpoint, "--store", "s.zarr", "--out", "report.json")
    assert json.loads((folder / "report.json").read_text())["n_recordings"] == 2
    run(installed, folder, *sc, "predict", "--checkpoint", checkpoint, "data/audio", "--out", "preds",
        "--format", "csv,birdclef")
    scored = run(installed, folder, *sc, "score", "preds/birdclef/recordings.txt", "data/truth.csv", "--json")
    assert json.loads(scored.stdout)["n_scored"] == 6
    run(installed, folder, *sc, "explain", "--checkpoint", checkpoint, "data/audio/sp00/XC000001.wav", "--out", "why.png")
    assert (folder / "why.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("statement", ["import soundception.cli", "import soundception.compose"])
def test_the_package_never_imports_a_generic_top_level_name(installed, foreign_folder, statement):
    code = f"{statement}; import sys; print([m for m in sys.modules if m.split('.')[0] in ('train', 'featurize', 'shared')])"
    assert run(installed, foreign_folder, "-c", code).stdout.strip() == "[]"


def test_the_review_page_ships_in_the_wheel(installed, foreign_folder):
    from review_fixture import make_predictions

    predictions = make_predictions(foreign_folder / "run")
    run(installed, foreign_folder, "-m", "soundception", "review", str(predictions), "--top", "1", "--per-bin", "0",
        "--no-progress")
    for name in ("index.html", "review.js", "review.css"):
        assert (predictions / "review" / name).read_bytes() == (ROOT / "soundception/review/page" / name).read_bytes()
    assert (predictions / "review" / "data.js").read_text().startswith("window.REVIEW = ")
