"""Deterministic generator of synthetic bird-like recordings with ground-truth call times.

Each species has one call kind in its own frequency band; bands are log-spaced between
1 kHz and 10 kHz with guard gaps, so species are separable on a (mel) spectrogram.
The signal functions (`render_call`, `render_recording`) are pure: numpy in, numpy out,
all randomness from the `rng` passed in. `make_dataset` does the file I/O: audio (16-bit
PCM wav/flac), labels.csv, calls.csv, truth.csv and BirdCLEF-2017-style XML metadata.
Same seed => byte-identical files.

    soundception synth OUT_DIR [--species 5] [--files-per-species 6] [--seed 0]
"""

from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

SPECIES_KINDS = ("upsweep", "trill", "harmonic", "whistle", "warble", "downsweep")
_KIND_TAXA = {  # kind -> (family, genus, epithet of the first species of that kind)
    "upsweep": ("Chirpidae", "Chirpus", "ascendens"),
    "downsweep": ("Chirpidae", "Descensor", "cadens"),
    "trill": ("Trillidae", "Trillia", "rapida"),
    "harmonic": ("Harmonidae", "Harmonica", "stratificata"),
    "whistle": ("Sibilidae", "Sibilus", "bitonus"),
    "warble": ("Trillidae", "Undulator", "vibrans"),
}
_EPITHETS = ("minor", "major", "borealis")  # for the 2nd, 3rd, 4th species of one kind
MAX_SPECIES = 16
BAND_MIN_HZ, BAND_MAX_HZ = 1000.0, 10000.0
_LOCALITIES = ("Serra do Mar", "Rio Negro", "Chapada Diamantina", "Pantanal", "Mata Atlantica")


def species_table(n_species: int, prefix: str = "sp") -> list[dict]:
    """Species ``sp00..`` (``prefix`` then two digits) with a call kind and a band [low_hz, high_hz] (Hz, integers).

    Bands occupy the central ~76% (in log-frequency) of equal log-width slots of 1-10 kHz,
    so neighbouring bands never overlap. Kinds cycle through SPECIES_KINDS.
    """
    if not 1 <= n_species <= MAX_SPECIES:
        raise ValueError(f"n_species must be in [1, {MAX_SPECIES}], got {n_species}")
    edges = np.geomspace(BAND_MIN_HZ, BAND_MAX_HZ, n_species + 1)
    guard = (edges[1] / edges[0]) ** 0.12
    table = []
    for i in range(n_species):
        kind = SPECIES_KINDS[i % len(SPECIES_KINDS)]
        family, genus, epithet = _KIND_TAXA[kind]
        round_ = i // len(SPECIES_KINDS)
        species = epithet if round_ == 0 else _EPITHETS[round_ - 1]
        table.append({
            "id": f"{prefix}{i:02d}", "name": f"{genus} {species}", "genus": genus, "species": species,
            "family": family, "kind": kind,
            "low_hz": int(math.ceil(edges[i] * guard)), "high_hz": int(edges[i + 1] / guard),
        })
    return table


def _envelope(n: int, *, ramp: int) -> np.ndarray:
    """Amplitude envelope (n,) in [0, 1]: raised-cosine attack and decay of `ramp` samples."""
    env = np.ones(n)
    ramp = max(1, min(ramp, n // 2))
    rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    env[:ramp], env[n - ramp:] = rise, rise[::-1]
    return env


def _tone(freq_hz: np.ndarray, *, sample_rate: int, phase: float) -> np.ndarray:
    """Sine (n,) with instantaneous frequency `freq_hz` (n,) in Hz."""
    return np.sin(phase + 2 * np.pi * np.cumsum(freq_hz) / sample_rate)


def render_call(kind: str, *, duration: float, low_hz: float, high_hz: float,
                sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One call of `kind` lasting `duration` seconds, confined to [low_hz, high_hz] Hz.

    Returns float32 samples, shape (round(duration * sample_rate),), peak 1 (within [-1, 1]).
    Frequencies stay at least 15% of the bandwidth away from the band edges; every note has
    a smooth raised-cosine attack/decay, so spectral leakage outside the band stays small.
    """
    if kind not in SPECIES_KINDS or not 0 < low_hz < high_hz < sample_rate / 2:
        raise ValueError(f"need kind in {SPECIES_KINDS} and 0 < low_hz < high_hz < {sample_rate / 2} Hz")
    n = round(duration * sample_rate)
    if n < 0.01 * sample_rate:
        raise ValueError(f"duration must be at least 0.01 s, got {duration}")
    width = high_hz - low_hz
    lo, hi = low_hz + 0.15 * width, high_hz - 0.15 * width
    t = np.arange(n) / sample_rate
    phase = rng.uniform(0, 2 * np.pi)
    ramp = int(min(0.03, duration / 4) * sample_rate)
    if kind in ("upsweep", "downsweep"):
        freq = np.linspace(lo, hi, n) if kind == "upsweep" else np.linspace(hi, lo, n)
        out = _tone(freq, sample_rate=sample_rate, phase=phase) * _envelope(n, ramp=ramp)
    elif kind == "trill":
        note = min(n, max(round(0.02 * sample_rate), round(8 / width * sample_rate)))
        period = note + round(note * rng.uniform(0.4, 0.8))
        out = np.zeros(n)
        centre = 0.5 * (lo + hi)
        for start in range(0, n - note + 1, period):
            glide = np.linspace(centre + 0.2 * (hi - lo), centre - 0.2 * (hi - lo), note)
            out[start:start + note] = _tone(glide, sample_rate=sample_rate, phase=phase) * np.hanning(note)
    elif kind == "harmonic":
        f0 = width / rng.uniform(3.0, 4.0)
        ks = np.arange(math.ceil(lo / f0), math.floor(hi / f0) + 1)
        out = sum(np.sin(2 * np.pi * k * f0 * t + phase * k) / (i + 1) for i, k in enumerate(ks))
        out = out * _envelope(n, ramp=ramp)
    elif kind == "whistle":
        f1, f2 = (lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo))[:: 1 if rng.random() < 0.5 else -1]
        half, gap = int(0.4 * n), n - 2 * int(0.4 * n)
        notes = [_tone(np.full(half, f), sample_rate=sample_rate, phase=phase) * _envelope(half, ramp=ramp)
                 for f in (f1, f2)]
        out = np.concatenate([notes[0], np.zeros(gap), notes[1]])
    else:  # warble: sinusoidal frequency modulation around the band centre
        fm = rng.uniform(6.0, 14.0)
        freq = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.sin(2 * np.pi * fm * t + phase)
        out = _tone(freq, sample_rate=sample_rate, phase=phase) * _envelope(n, ramp=ramp)
    peak = np.max(np.abs(out))
    return (out / peak if peak > 0 else out).astype(np.float32)


def _pink_noise(n: int, *, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise (n,) whose power spectrum falls as 1/f above 50 Hz (flat below)."""
    from scipy.fft import irfft, next_fast_len, rfft, rfftfreq

    m = next_fast_len(n, real=True)  # arbitrary n can have large prime factors: slow FFTs
    spectrum = rfft(rng.standard_normal(m))
    spectrum /= np.sqrt(np.maximum(rfftfreq(m, 1 / sample_rate), 50.0))
    noise = irfft(spectrum, m)[:n]
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _place_calls(sp: dict, count: int, level: float, *, total_ms: int, sample_rate: int,
                 rng: np.random.Generator, is_background: bool, mix: np.ndarray) -> list[dict]:
    """Add `count` calls (0.1-1.5 s) of species `sp` into `mix`, one at a random millisecond-aligned
    time inside each of `count` equal slots of the recording, so they never overlap each other."""
    calls = []
    count = min(count, total_ms // 100)
    slot = total_ms // max(count, 1)
    for i in range(count):
        length_ms = int(rng.integers(100, min(1500, slot) + 1))
        start_ms = i * slot + int(rng.integers(0, slot - length_ms + 1))
        a, b = round(start_ms * sample_rate / 1000), round((start_ms + length_ms) * sample_rate / 1000)
        call = render_call(sp["kind"], duration=(b - a) / sample_rate, low_hz=sp["low_hz"],
                           high_hz=sp["high_hz"], sample_rate=sample_rate, rng=rng)
        mix[a:a + len(call)] += level * call[: len(mix) - a]
        calls.append({"species": sp["id"], "start": start_ms / 1000, "end": (start_ms + length_ms) / 1000,
                      "low_hz": sp["low_hz"], "high_hz": sp["high_hz"], "background": is_background})
    return calls


def render_recording(*, duration: float, main: dict, background: list[dict], sample_rate: int,
                     rng: np.random.Generator, snr_db: float) -> tuple[np.ndarray, list[dict]]:
    """A recording of `duration` seconds (>= 0.1 s): calls of `main` plus 1-2 quieter calls
    of each `background` species, in pink or white noise at `snr_db` dB relative to the mean
    power of the main species' calls while they sound.

    Returns (samples float32 (round(duration * sample_rate),) peak-normalised to 0.9, calls
    sorted by start), each call {species, start, end (s), low_hz, high_hz (Hz), background}.
    """
    n = round(duration * sample_rate)
    total_ms = int(n * 1000 // sample_rate)
    if total_ms < 100:
        raise ValueError("duration must be at least 0.1 s")
    mix = np.zeros(n)
    n_main = max(2, round(duration / rng.uniform(2.0, 5.0)))
    calls = _place_calls(main, n_main, 1.0, total_ms=total_ms, sample_rate=sample_rate, rng=rng,
                         is_background=False, mix=mix)
    active = np.abs(mix) > 1e-6
    signal_rms = np.sqrt(np.mean(mix[active] ** 2)) if active.any() else 1.0
    for sp in background:
        calls += _place_calls(sp, int(rng.integers(1, 3)), rng.uniform(0.15, 0.4), total_ms=total_ms,
                              sample_rate=sample_rate, rng=rng, is_background=True, mix=mix)
    pink = rng.random() < 0.5
    noise = _pink_noise(n, sample_rate=sample_rate, rng=rng) if pink else rng.standard_normal(n)
    mix += noise * signal_rms / 10 ** (snr_db / 20)
    mix *= 0.9 / np.max(np.abs(mix))
    return mix.astype(np.float32), sorted(calls, key=lambda c: (c["start"], c["species"]))


def _write_xml(path: Path, *, file_id: str, file_name: str, sp: dict, background: list[dict],
               duration: float, rng: np.random.Generator) -> None:
    """BirdCLEF-2017-style metadata XML (root <Audio>) for one recording."""
    root = ET.Element("Audio")
    fields = {
        "MediaId": file_id, "FileName": file_name, "ClassId": sp["id"], "Duration": f"{duration:.3f}",
        "Date": f"{rng.integers(2005, 2017)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}",
        "Locality": _LOCALITIES[rng.integers(len(_LOCALITIES))],
        "Latitude": f"{rng.uniform(-30, 5):.4f}", "Longitude": f"{rng.uniform(-70, -35):.4f}",
        "Author": "Soundception synthetic", "Content": "call", "Quality": "ABCDE"[rng.integers(5)],
        "Year": "BirdCLEF2017", "BackgroundSpecies": ",".join(b["name"] for b in background),
        "Order": "Passeriformes", "Family": sp["family"], "Genus": sp["genus"], "Species": sp["species"],
        "VernacularNames": f"Synthetic {sp['kind']} bird",
    }
    for tag, text in fields.items():
        ET.SubElement(root, tag).text = text
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)


def make_dataset(out_dir, *, n_species: int = 5, files_per_species: int = 6, min_seconds: float = 4.0,
                 max_seconds: float = 90.0, sample_rate: int = 22050, seed: int = 0,
                 formats: tuple[str, ...] = ("wav", "flac"), prefix: str = "sp") -> dict:
    """Write a synthetic corpus of n_species * files_per_species recordings into `out_dir`:

    audio/<species_id>/<file_id>.<ext>   mono 16-bit PCM at `sample_rate` Hz
    labels.csv  path,label,background    (path relative to audio/, background ids joined by ';')
    calls.csv   file,species,start,end,low_hz,high_hz,background   (seconds, Hz, 0/1)
    truth.csv   MediaId,ClassId,BackgroundClassIds   (for ``soundception score``; MediaId = file name stem)
    xml/<file_id>.xml                    BirdCLEF-2017-style metadata, root <Audio>

    Durations (s) are log-uniform in [min_seconds, max_seconds]; file k is in formats[k % len(formats)].
    Returns {n_files, total_seconds, species, files, paths}.
    """
    import soundfile

    if not 0.1 <= min_seconds <= max_seconds:
        raise ValueError("need 0.1 <= min_seconds <= max_seconds")
    out = Path(out_dir)
    (out / "xml").mkdir(parents=True, exist_ok=True)
    table = species_table(n_species, prefix)
    labels, truth, all_calls, files, total = [], [], [], [], 0.0
    lo_n, hi_n = math.ceil(min_seconds * sample_rate), math.floor(max_seconds * sample_rate)
    for k in range(n_species * files_per_species):
        rng = np.random.default_rng([seed, k])
        sp = table[k // files_per_species]
        others = [s for s in table if s["id"] != sp["id"]]
        background = [others[rng.integers(len(others))]] if others and rng.random() < 0.5 else []
        n = int(np.clip(round(np.exp(rng.uniform(np.log(min_seconds), np.log(max_seconds))) * sample_rate),
                        lo_n, hi_n))
        audio, calls = render_recording(duration=n / sample_rate, main=sp, background=background,
                                        sample_rate=sample_rate, rng=rng, snr_db=rng.uniform(0.0, 20.0))
        file_id, ext = f"XC{k + 1:06d}", formats[k % len(formats)]
        rel = f"{sp['id']}/{file_id}.{ext}"
        (out / "audio" / sp["id"]).mkdir(parents=True, exist_ok=True)
        soundfile.write(out / "audio" / rel, audio, sample_rate, subtype="PCM_16", format=ext.upper())
        _write_xml(out / "xml" / f"{file_id}.xml", file_id=file_id, file_name=f"{file_id}.{ext}", sp=sp,
                   background=background, duration=n / sample_rate, rng=rng)
        labels.append([rel, sp["id"], ";".join(b["id"] for b in background)])
        truth.append([file_id, sp["id"], ";".join(b["id"] for b in background)])
        all_calls += [[rel, c["species"], f"{c['start']:.3f}", f"{c['end']:.3f}", c["low_hz"], c["high_hz"],
                       int(c["background"])] for c in calls]
        files.append(rel)
        total += n / sample_rate
    for name, header, rows in (("labels.csv", ["path", "label", "background"], labels),
                               ("truth.csv", ["MediaId", "ClassId", "BackgroundClassIds"], truth),
                               ("calls.csv", ["file", "species", "start", "end", "low_hz", "high_hz",
                                              "background"], all_calls)):
        with open(out / name, "w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows([header, *rows])
    paths = {"root": str(out), "audio": str(out / "audio"), "xml": str(out / "xml"),
             "labels": str(out / "labels.csv"), "calls": str(out / "calls.csv"), "truth": str(out / "truth.csv")}
    return {"n_files": len(files), "total_seconds": total, "species": table, "files": files, "paths": paths}

