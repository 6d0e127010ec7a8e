"""The store schema: names, dimensions, dtypes and attributes both sides of the store agree on.

A store is one Zarr v3 group::

    image       (file, channel, freq, time)  uint8   padded; columns >= n_frames are unwritten
    file        (file,)                      str     stable id: path relative to the audio root
    channel     (channel,)                   str     "fft128", "fft512", "fft2048"
    freq        (freq,)                      float32 Hz, row 0 is the highest frequency
    time        (time,)                      float64 s, centre of each column
    class       (class,)                     str     class ids, sorted
    class_name  (class,)                     str     human-readable names (species) where known
    path        (file,)                      str     source path relative to the audio root
    label       (file,)                      int32   index into ``class``; -1 when unlabelled
    background  (file,)                      str     background species, ";"-separated ids/names
    duration    (file,)                      float64 s, original (before self-concatenation)
    n_frames    (file,)                      int32   valid image width in pixels
    status      (file,)                      str     "pending" | "done" | "failed"
    error       (file,)                      str     one-line reason when failed
    warning     (file,)                      str     one-line note when done with a caveat

and, in a store given call annotations (``featurize --annotations``), one row per annotated call,
sorted by (file, start, end, class)::

    event_file     (event,)  int32   index into ``file``
    event_start_s  (event,)  float64 s from the start of the recording
    event_end_s    (event,)  float64 s, > event_start_s
    event_low_hz   (event,)  float64 Hz, NaN where the annotation gives no band
    event_high_hz  (event,)  float64 Hz, NaN where the annotation gives no band
    event_class    (event,)  int32   index into ``class``

Group attributes: ``schema_version``, ``featurizer_config`` (dict), ``config_hash``,
``versions`` (library versions that wrote it), ``audio_root``, and ``sources`` where a run was given
its audio's fingerprints (``{file id: {"size": bytes, "mtime": str}}``: what the audio was when
its image was made, so a file edited since is featurized again; ``predict`` from audio does this),
and ``event_count`` in a store with events: the number of rows of every ``event_*`` array, written
after them (absent or different while a write is under way, so a half-written table is seen).
"""

from __future__ import annotations

import numpy as np

from soundception.shared.config import FeaturizerConfig

# 2: one hop per FFT window and pooled resizes (hop_lengths, time_resize, frequency_resize)
# 3: empty frequency bands (codec cut-offs, upsampled audio) left out of the clip bounds (empty_band_db)
# 4: grey 0 a fixed step above the background level, not the 1st percentile (codec-independent images)
SCHEMA_VERSION = 4

IMAGE = "image"
IMAGE_DIMS = ("file", "channel", "freq", "time")
FILE, CHANNEL, FREQ, TIME, CLASS, EVENT = "file", "channel", "freq", "time", "class", "event"

# name -> (dims, numpy dtype or "str", fill value)
PER_FILE = {
    "path": ((FILE,), "str", ""),
    "label": ((FILE,), "int32", -1),
    "background": ((FILE,), "str", ""),
    "duration": ((FILE,), "float64", np.nan),
    "n_frames": ((FILE,), "int32", 0),
    "status": ((FILE,), "str", "pending"),
    "error": ((FILE,), "str", ""),
    "warning": ((FILE,), "str", ""),
}
PER_CLASS = {"class_name": ((CLASS,), "str", "")}
# created only in stores given call annotations; the reader reads a store without them as having none
PER_EVENT = {
    "event_file": ((EVENT,), "int32", -1),
    "event_start_s": ((EVENT,), "float64", np.nan),
    "event_end_s": ((EVENT,), "float64", np.nan),
    "event_low_hz": ((EVENT,), "float64", np.nan),
    "event_high_hz": ((EVENT,), "float64", np.nan),
    "event_class": ((EVENT,), "int32", -1),
}
EVENT_UNITS = {"event_start_s": "s", "event_end_s": "s", "event_low_hz": "Hz", "event_high_hz": "Hz"}
EVENT_COUNT = "event_count"

ATTRIBUTES = ("schema_version", "featurizer_config", "config_hash", "versions", "audio_root", "sources",
              EVENT_COUNT)
SOURCES = "sources"

PENDING, DONE, FAILED = "pending", "done", "failed"
STATUSES = (PENDING, DONE, FAILED)

BACKGROUND_SEPARATOR = ";"


def freq_coordinate(config: FeaturizerConfig) -> np.ndarray:
    """Frequency in Hz of each image row, shape ``(image_height,)``, descending.

    Rows map linearly onto ``[0, sample_rate / 2]`` with both ends included ("align corners"),
    for every FFT window alike, so one coordinate describes all channels. Row 0 is Nyquist (top of
    the picture), the last row is 0 Hz (bottom), as in the paper's figures.
    """
    rows = np.arange(config.image_height, dtype=np.float64)
    nyquist = config.sample_rate / 2.0
    return (nyquist * (config.image_height - 1 - rows) / (config.image_height - 1)).astype(np.float32)


def time_coordinate(n_columns: int, config: FeaturizerConfig) -> np.ndarray:
    """Time in seconds of the centre of each image column, shape ``(n_columns,)``.

    Column ``c`` covers ``[c, c + 1) / pixels_per_second`` seconds, the same for every file.
    """
    return (np.arange(n_columns, dtype=np.float64) + 0.5) / config.pixels_per_second


def as_strings(values: object) -> np.ndarray:
    """A string array read from zarr (numpy ``StringDType``) as a plain ``<U`` numpy array."""
    items = np.asarray(values, dtype=object).ravel().tolist()
    return np.array([str(item) for item in items], dtype=str) if items else np.zeros(0, dtype=str)
