"""The generated data the benchmarks train on: calls over noise at a chosen difficulty.

Shared by ``bench/augment.py`` and ``bench/localize.py``; the layout is ``soundception synth``'s.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np


def make_audio(root: Path, *, n_species: int, files_per_species: int, seconds: tuple[float, float],
               snr_db: tuple[float, float], seed: int, sample_rate: int = 22050) -> Path:
    """Write ``root/audio/<species>/<file>.wav`` (16-bit), ``root/labels.csv`` and ``root/calls.csv``.

    Durations (s) are log-uniform in ``seconds``; the signal-to-noise ratio (dB, against the main
    species' calls while they sound) is uniform in ``snr_db``.
    """
    import soundfile

    from soundception.featurize.synthetic import render_recording, species_table

    table = species_table(n_species)
    labels, calls = [["path", "label", "background"]], [["file", "species", "start", "end", "low_hz", "high_hz",
                                                          "background"]]
    for k in range(n_species * files_per_species):
        rng = np.random.default_rng([seed, k])
        main = table[k // files_per_species]
        others = [s for s in table if s["id"] != main["id"]]
        background = [others[rng.integers(len(others))]] if rng.random() < 0.5 else []
        duration = math.exp(rng.uniform(math.log(seconds[0]), math.log(seconds[1])))
        audio, placed = render_recording(duration=duration, main=main, background=background,
                                         sample_rate=sample_rate, rng=rng, snr_db=rng.uniform(*snr_db))
        relative = f"{main['id']}/XC{k + 1:06d}.wav"
        (root / "audio" / main["id"]).mkdir(parents=True, exist_ok=True)
        soundfile.write(root / "audio" / relative, audio, sample_rate, subtype="PCM_16")
        labels.append([relative, main["id"], ";".join(b["id"] for b in background)])
        calls += [[relative, c["species"], f"{c['start']:.3f}", f"{c['end']:.3f}", c["low_hz"], c["high_hz"],
                   int(c["background"])] for c in placed]
    for name, rows in (("labels.csv", labels), ("calls.csv", calls)):
        with open(root / name, "w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(rows)
    return root / "labels.csv"
