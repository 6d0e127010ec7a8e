"""A real ``predict --segments`` output folder without a model: what ``soundception review`` reads.

The journal is written with :func:`train.journal.write_journal`, the audio is generated, and
``settings.json``, ``classes.csv`` and ``featurizer_config.json`` are written as ``predict`` writes
them. Review never opens the checkpoint, so none is made. Scores are chosen so the sample's counts
can be worked out by hand (see ``tests/test_review.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile

from soundception.shared.config import FeaturizerConfig
from soundception.train.journal import Prediction, write_journal

SR = 22050
FILES = ("a.wav", "b.wav", "c,d.wav", "e.wav", "missing.wav")  # sorted; "missing.wav" has no audio
CLASSES = (("sp0", "Alpha warbler"), ("sp1", "Beta finch"), ("sp2", "Gamma, comma bird"))
SECONDS, SEGMENT = 20.0, 5.0


def chirp_frequency(t: np.ndarray) -> np.ndarray:
    """Every recording is a tone rising 200 Hz a second from 1 kHz: a clip's pitch tells where it was cut."""
    return 1000.0 + 200.0 * t


def segment_scores(k: int) -> np.ndarray:
    """Segment ``k`` (0..19 over the recordings in order): sp0 0.01 + 0.05 k, sp1 0.989 minus that, sp2 0.001."""
    first = round(0.01 + 0.05 * k, 6)
    return np.array([first, round(0.989 - first, 6), 0.001], dtype=np.float32)


def make_predictions(folder: Path, *, segments: bool = True, top_k: int = 2) -> Path:
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SECONDS * SR)) / SR
    phase = 2 * np.pi * np.cumsum(chirp_frequency(t)) / SR
    rng = np.random.default_rng(0)
    out = folder / "predictions"
    for r, name in enumerate(FILES):
        path = audio / name
        if name != "missing.wav":
            samples = 0.4 * np.sin(phase) + 0.02 * rng.standard_normal(t.size)
            soundfile.write(path, samples.astype(np.float32), SR)
        bounds = np.array([[s, min(s + SEGMENT, SECONDS)] for s in np.arange(0, SECONDS, SEGMENT)])
        scores = np.stack([segment_scores(r * len(bounds) + i) for i in range(len(bounds))])
        prediction = Prediction(file=name, duration=SECONDS, path=str(path), scores=scores.mean(axis=0),
                                segments=bounds if segments else np.zeros((0, 2)),
                                segment_scores=scores if segments else np.zeros((0, 0), np.float32),
                                bands=np.tile([500.0, 6000.0], (len(bounds), 1)) if segments else np.zeros((0, 2)))
        key = json.dumps({"journal": 1, "file": name, "checkpoint": "c0ffee", "hop_px": 100,
                          "segment_seconds": SEGMENT if segments else None}, sort_keys=True)
        write_journal(out, key, prediction)
    settings = {"checkpoint": "run/checkpoints/last.pt", "checkpoint_sha256": "c0ffee", "store": str(folder / "s.zarr"),
                "options": {"segment_seconds": SEGMENT if segments else None, "top_k": top_k, "min_score": 0.0}}
    (out / "settings.json").write_text(json.dumps(settings))
    (out / "featurizer_config.json").write_text(json.dumps(FeaturizerConfig().to_dict()))
    (out / "classes.csv").write_text("class_id,class_name\n" + "".join(
        f'{i},"{n}"\n' if "," in n else f"{i},{n}\n" for i, n in CLASSES))
    return out
