"""Shared helpers for the featurize tests: tiny generated audio in tmp_path, small configs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
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


def synthetic_store(root: Path, config, *, rename: dict[str, str] | None = None, **dataset) -> str:
    """``soundception synth``'s recordings (``dataset``: :func:`make_dataset`'s options) featurized
    serially with ``config`` into ``root/s.zarr``; ``rename``: species id -> the label written for it."""
    import csv

    from soundception.featurize.pipeline import featurize_store
    from soundception.featurize.synthetic import make_dataset

    info = make_dataset(root / "data", **dataset)
    labels = Path(info["paths"]["labels"])
    if rename:
        with open(labels, newline="") as handle:
            rows = list(csv.reader(handle))
        with open(labels, "w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(
                [rows[0]] + [[r[0], rename.get(r[1], r[1]), *r[2:]] for r in rows[1:]])
    store = str(root / "s.zarr")
    featurize_store(info["paths"]["audio"], store, config=config, metadata=labels, labels="csv")
    return store


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny trained model for the prediction-side tests, made once per session.

    3 synthetic species x 6 recordings of 3-8 s (clips under 4 s are self-concatenated), a small
    image (64 rows, 0.75 s per 64 px), timm's ``test_efficientnet`` trained 60 steps on 2 s crops.
    Returns a namespace: ``root``, ``audio`` (folder), ``labels``, ``calls`` (csv paths), ``store``,
    ``checkpoint``, ``config`` (the FeaturizerConfig).
    """
    from types import SimpleNamespace

    from soundception.featurize.pipeline import featurize_store
    from soundception.featurize.synthetic import make_dataset
    from soundception.shared.config import FeaturizerConfig
    from soundception.train.config import RunConfig, StageConfig
    from soundception.train.loop import train

    root = tmp_path_factory.mktemp("trained")
    config = FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=4.0)
    info = make_dataset(root / "data", n_species=3, files_per_species=6, min_seconds=3.0, max_seconds=8.0, seed=3)
    store = str(root / "train.zarr")
    featurize_store(info["paths"]["audio"], store, config=config, metadata=info["paths"]["labels"], labels="csv")
    run = RunConfig(store=store, out=str(root / "run"), backbone="test_efficientnet", crop_seconds=2.0,
                    attention_hidden=16, validation_fraction=0.2, augment=_no_augment(),
                    stage1=StageConfig(steps=10, batch_size=8, lr=3e-3, warmup_steps=2, train_backbone=False),
                    stage2=StageConfig(steps=50, batch_size=8, lr=3e-3, warmup_steps=5, train_backbone=True),
                    num_workers=0, log_every=10, eval_every=0, checkpoint_every=0, eval_batch_size=16)
    result = train(run, progress=False)
    return SimpleNamespace(root=root, audio=Path(info["paths"]["audio"]), labels=Path(info["paths"]["labels"]),
                           calls=Path(info["paths"]["calls"]), store=store, checkpoint=Path(result["checkpoint"]),
                           config=config, validation=result["validation"])


def _no_augment():
    from soundception.train.augment import AugmentConfig

    return AugmentConfig.from_spec("none")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-compatible server (moto) on loopback, one per test module; yields storage options."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        pytest.fail("moto_server is not installed: pip install -e '.[dev]'")
    port = free_port()
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("moto_server did not start")
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    finally:
        process.terminate()
        process.wait(timeout=10)
