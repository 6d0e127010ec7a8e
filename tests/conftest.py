"""Shared helpers for the featurize tests: tiny generated audio in tmp_path, small configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

SR = 22050


def tone(freq: float, seconds: float, *, sample_rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, *, sample_rate: int = SR, seed: int = 0, amplitude: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(round(seconds * sample_rate)))).astype(np.float32)


def write(path: Path, samples: np.ndarray, sample_rate: int = SR, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, sample_rate, **kwargs)
    return path


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """Two classes (folders) x two short files, distinct tones over noise; 3-5 s each."""
    root = tmp_path / "audio"
    for label, freq in (("low", 1000.0), ("high", 5000.0)):
        for k in range(2):
            seconds = 3.0 + 2 * k
            write(root / label / f"{label}{k}.wav", tone(freq, seconds, amplitude=0.3) + noise(seconds, seed=k))
    return root
