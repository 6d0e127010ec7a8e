"""A review card's media: the clip cut from its decoded recording, and the featurizer's image of it.

Each recording is decoded once (:func:`featurize.audio.decode`, mono at the run's sample rate: the
audio the model heard) and every clip of its cards is cut from it. The image is
:func:`featurize.image.multiscale_image` of the clip under the run's ``featurizer_config.json``
(clip bounds from the clip itself), shrunk to :data:`IMAGE_SIZE` and saved as JPEG; the audio is
Ogg Vorbis at that rate. Measured on a 7 s clip of white noise at 22,050 Hz (the hardest case for a
codec): 16-bit WAV 309 KB; Ogg Opus (resampled to 24 kHz, libsndfile's level 0.9) 25.5 KB in
0.35 s; Ogg Vorbis (level 0.9) 33.5 KB in 0.025 s. Both decode in Chromium; Vorbis is chosen
because libsndfile's Opus encoder is 14 times slower, which at 10,000 cards is an hour against
four minutes. A file is named by the hash of what made it, so a rerun reuses it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from soundception.shared.files import atomic_write
from soundception.shared.progress import Progress
from soundception.shared.text import one_line

IMAGE_SIZE = (300, 128)  # width, height in pixels
JPEG_QUALITY = 80
VORBIS_LEVEL = 0.9  # soundfile's compression level (0: best quality, 1: smallest): about 40 kbit/s at 22,050 Hz
MEDIA_VERSION = 1  # bump when the way media are made changes, so a rerun makes them again


def media_name(path: str, file_id: str, clip: tuple[float, float], config: dict[str, Any]) -> str:
    """The file stem of one clip's media: a hash of its source, span, featurizer config and :data:`MEDIA_VERSION`."""
    what = json.dumps([MEDIA_VERSION, path, file_id, clip, config], sort_keys=True)
    return hashlib.sha1(what.encode("utf-8")).hexdigest()[:16]


def clip_image(samples: np.ndarray, config: Any) -> bytes:
    """JPEG bytes of the featurizer's RGB image of ``samples`` (mono float32 at ``config.sample_rate``),
    resized to :data:`IMAGE_SIZE` (low frequencies at the bottom, as in the store)."""
    from PIL import Image

    from soundception.featurize.image import multiscale_image

    pixels = multiscale_image(samples, config)  # (3, height, width) uint8, row 0 = Nyquist
    picture = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), "RGB").resize(IMAGE_SIZE, Image.BOX)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def clip_audio(samples: np.ndarray, sample_rate: int) -> bytes:
    """Ogg Vorbis bytes of ``samples`` (mono float32 at ``sample_rate`` Hz)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format="OGG", subtype="VORBIS",
                    compression_level=VORBIS_LEVEL)
    return buffer.getvalue()


def clip_media(run: Any, cards: Sequence[dict[str, Any]], folder: Path, *,
               progress: bool = False) -> tuple[dict[tuple[int, tuple[float, float]], str], list[tuple[str, str, str]]]:
    """Write ``folder/<name>.jpg`` and ``.ogg`` for every distinct clip of ``cards`` (made once; kept on a rerun).

    Returns:
        ``{(recording, clip): name}`` for the clips made or found, and ``(file, path, error)`` for each
        recording that could not be decoded (its clips get no media; the others are still made).
    """
    from soundception.featurize.audio import DecodeError, decode
    from soundception.shared.config import FeaturizerConfig

    config = FeaturizerConfig.from_dict(run.featurizer_config)
    clips: dict[int, set[tuple[float, float]]] = {}
    for card in cards:
        clips.setdefault(card["recording"], set()).add(card["clip"])
    made, failures = {}, []
    with Progress(len(clips), desc="review", unit="recording", disable=not progress) as bar:
        for done, (recording, spans) in enumerate(sorted(clips.items()), start=1):
            info = run.recordings[recording]
            names = {clip: media_name(info["path"], info["file"], clip, run.featurizer_config) for clip in spans}
            todo = [c for c, n in names.items() if not ((folder / f"{n}.jpg").is_file() and (folder / f"{n}.ogg").is_file())]
            try:
                samples = decode(info["path"], sample_rate=config.sample_rate).samples if todo else None
                for clip in sorted(todo):
                    _write_clip(samples, clip, config, folder / names[clip])
            except (DecodeError, OSError, ValueError) as error:
                failures.append((info["file"], info["path"], one_line(error)))
                continue
            made.update({(recording, clip): name for clip, name in names.items()})
            bar.update(done)
    return made, failures


def _write_clip(samples: np.ndarray, clip: tuple[float, float], config: Any, stem: Path) -> None:
    """Cut ``clip`` (s) out of the decoded recording and write its image and audio beside ``stem``."""
    rate = config.sample_rate
    first, last = int(round(clip[0] * rate)), min(samples.size, int(round(clip[1] * rate)))
    if last <= first:
        raise ValueError(f"the clip {clip[0]:g}-{clip[1]:g} s lies past the decoded audio ({samples.size / rate:.3f} s)")
    piece = np.asarray(samples[first:last], dtype=np.float32)
    with atomic_write(stem.with_suffix(".jpg")) as handle:
        handle.write(clip_image(piece, config))
    with atomic_write(stem.with_suffix(".ogg")) as handle:  # the .ogg last: both present means both whole
        handle.write(clip_audio(piece, rate))
