"""Facts about the synthetic bird-call generator (featurize/synthetic.py)."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile

from soundception.featurize.synthetic import SPECIES_KINDS, make_dataset, render_call, render_recording, species_table

SR = 22050
SMALL = dict(n_species=4, files_per_species=3, min_seconds=2.0, max_seconds=12.0, sample_rate=SR)


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, make_dataset(out, seed=7, **SMALL)


@pytest.mark.parametrize("n", [1, 5, 12, 16])
def test_species_bands_are_disjoint_and_inside_1_to_10_khz(n):
    table = species_table(n)
    assert [sp["id"] for sp in table] == [f"sp{i:02d}" for i in range(n)]
    assert len({sp["name"] for sp in table}) == n
    assert all(sp["name"] == f"{sp['genus']} {sp['species']}" for sp in table)
    assert all(sp["kind"] in SPECIES_KINDS for sp in table)
    if n >= len(SPECIES_KINDS):
        assert {sp["kind"] for sp in table} == set(SPECIES_KINDS)
    bands = sorted((sp["low_hz"], sp["high_hz"]) for sp in table)
    assert all(1000 <= lo < hi <= 10000 for lo, hi in bands)
    for (_, hi), (next_lo, _) in zip(bands, bands[1:]):
        assert next_lo >= 1.03 * hi  # a guard gap of at least 3% between neighbours


@pytest.mark.parametrize("n", [0, 17])
def test_species_table_rejects_unsupported_counts(n):
    with pytest.raises(ValueError):
        species_table(n)


@pytest.mark.parametrize("sp", species_table(12), ids=lambda sp: f"{sp['id']}-{sp['kind']}")
@pytest.mark.parametrize("duration", [0.1, 0.6, 1.5])
def test_rendered_call_energy_lies_in_its_band(sp, duration):
    call = render_call(sp["kind"], duration=duration, low_hz=sp["low_hz"], high_hz=sp["high_hz"],
                       sample_rate=SR, rng=np.random.default_rng(3))
    assert call.dtype == np.float32 and call.shape == (round(duration * SR),)
    assert np.max(np.abs(call)) <= 1.0 and np.max(np.abs(call)) > 0.5
    power = np.abs(np.fft.rfft(call.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(call), 1 / SR)
    in_band = power[(freqs >= sp["low_hz"]) & (freqs <= sp["high_hz"])].sum()
    assert in_band / power.sum() > 0.9


def test_render_call_is_seeded_and_calls_of_a_kind_vary_with_the_seed():
    kw = dict(duration=0.5, low_hz=2000.0, high_hz=3000.0, sample_rate=SR)
    for kind in SPECIES_KINDS:
        a = render_call(kind, rng=np.random.default_rng(1), **kw)
        b = render_call(kind, rng=np.random.default_rng(1), **kw)
        c = render_call(kind, rng=np.random.default_rng(2), **kw)
        assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_render_recording_ground_truth_matches_the_audio():
    table = species_table(5)
    main, other = table[1], table[3]
    audio, calls = render_recording(duration=8.0, main=main, background=[other], sample_rate=SR,
                                    rng=np.random.default_rng(11), snr_db=10.0)
    assert audio.dtype == np.float32 and audio.shape == (8 * SR,)
    assert np.max(np.abs(audio)) == pytest.approx(0.9, abs=1e-6)
    mains = [c for c in calls if not c["background"]]
    backs = [c for c in calls if c["background"]]
    assert len(mains) >= 2 and 1 <= len(backs) <= 2
    assert {c["species"] for c in mains} == {main["id"]} and {c["species"] for c in backs} == {other["id"]}
    for c in calls:
        assert 0 <= c["start"] < c["end"] <= 8.0 and 0.1 <= c["end"] - c["start"] <= 1.5
    for a, b in zip(mains, mains[1:]):
        assert a["end"] <= b["start"]
    # The main species' band is much louder while its calls sound than when no call sounds.
    power = np.abs(librosa.stft(audio, n_fft=1024, hop_length=256)) ** 2
    freqs = librosa.fft_frequencies(sr=SR, n_fft=1024)
    times = librosa.frames_to_time(np.arange(power.shape[1]), sr=SR, hop_length=256)
    band = power[(freqs >= main["low_hz"]) & (freqs <= main["high_hz"])].sum(axis=0)
    during = np.zeros(len(times), bool)
    silent = np.ones(len(times), bool)
    for c in calls:
        if not c["background"]:
            during |= (times >= c["start"] + 0.05) & (times <= c["end"] - 0.05)
        silent &= (times < c["start"] - 0.1) | (times > c["end"] + 0.1)
    assert during.any() and silent.any()
    assert np.median(band[during]) > 10 * np.median(band[silent])


def test_same_seed_gives_identical_bytes_and_another_seed_differs(dataset, tmp_path):
    out, _ = dataset
    again, other = tmp_path / "again", tmp_path / "other"
    make_dataset(again, seed=7, **SMALL)
    make_dataset(other, seed=8, **SMALL)
    first = _tree_bytes(out)
    assert _tree_bytes(again) == first
    different = _tree_bytes(other)
    audio = [k for k in first if k.startswith("audio")]
    assert audio and all(different.get(k) != first[k] for k in audio)


def test_audio_files_read_back_with_rate_duration_format_and_no_clipping(dataset):
    out, summary = dataset
    _, labels = _read_csv(out / "labels.csv")
    assert summary["n_files"] == len(labels) == SMALL["n_species"] * SMALL["files_per_species"]
    assert {Path(r["path"]).suffix for r in labels} == {".wav", ".flac"}
    total = 0.0
    for row in labels:
        path = out / "audio" / row["path"]
        assert path.parent.name == row["label"]
        info = soundfile.info(str(path))
        assert info.samplerate == SR and info.channels == 1 and info.subtype == "PCM_16"
        assert info.format == path.suffix[1:].upper()
        assert SMALL["min_seconds"] <= info.duration <= SMALL["max_seconds"]
        pcm, rate = soundfile.read(str(path), dtype="int16")
        assert rate == SR
        peak = np.max(np.abs(pcm.astype(np.int32)))
        assert 0.85 * 32767 < peak < 32767  # peak-normalised to ~0.9, never at full scale
        total += info.duration
    assert summary["total_seconds"] == pytest.approx(total)


def test_labels_calls_and_xml_agree(dataset):
    out, summary = dataset
    names = {sp["id"]: sp for sp in summary["species"]}
    label_header, labels = _read_csv(out / "labels.csv")
    call_header, calls = _read_csv(out / "calls.csv")
    assert label_header == ["path", "label", "background"]
    assert call_header == ["file", "species", "start", "end", "low_hz", "high_hz", "background"]
    by_file = defaultdict(list)
    for c in calls:
        by_file[c["file"]].append(c)
    assert set(by_file) == {r["path"] for r in labels}
    xml_files = sorted(p.name for p in (out / "xml").glob("*.xml"))
    assert xml_files == sorted(Path(r["path"]).stem + ".xml" for r in labels)
    for row in labels:
        main, back = row["label"], [b for b in row["background"].split(";") if b]
        duration = soundfile.info(str(out / "audio" / row["path"])).duration
        root = ET.parse(out / "xml" / f"{Path(row['path']).stem}.xml").getroot()
        assert root.tag == "Audio"
        assert root.findtext("ClassId") == main
        assert root.findtext("FileName") == Path(row["path"]).name
        assert root.findtext("MediaId") == Path(row["path"]).stem
        assert root.findtext("Genus") == names[main]["genus"]
        assert root.findtext("Species") == names[main]["species"]
        assert root.findtext("Family") == names[main]["family"]
        for tag in ("Date", "Locality", "Latitude", "Longitude", "Quality"):
            assert root.findtext(tag)
        xml_back = [s for s in (root.findtext("BackgroundSpecies") or "").split(",") if s]
        assert xml_back == [names[b]["name"] for b in back]
        file_calls = by_file[row["path"]]
        assert {c["species"] for c in file_calls if c["background"] == "0"} == {main}
        assert {c["species"] for c in file_calls if c["background"] == "1"} == set(back)
        for c in file_calls:
            start, end = float(c["start"]), float(c["end"])
            assert 0 <= start < end <= duration
            sp = names[c["species"]]
            assert (int(c["low_hz"]), int(c["high_hz"])) == (sp["low_hz"], sp["high_hz"])
