"""Inputs that are not clean local audio: truncated files of every format, formats that need
ffmpeg, malformed label CSVs, and audio on object storage (a real moto S3 server on loopback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import SR, noise, tone, write

from soundception.featurize.audio import DecodeError, decode

# format keyword arguments for soundfile.write, by file extension; opus is always 48 kHz
CODECS = {
    "wav": {"subtype": "PCM_16"},
    "flac": {},
    "ogg": {"format": "OGG", "subtype": "VORBIS"},
    "opus": {"format": "OGG", "subtype": "OPUS"},
    "mp3": {"format": "MP3", "subtype": "MPEG_LAYER_III"},
    "aiff": {"format": "AIFF"},
}


def recording(tmp_path, extension: str, seconds: float = 10.0):
    rate = 48000 if extension == "opus" else SR
    signal = tone(1000.0, seconds, sample_rate=rate) + noise(seconds, sample_rate=rate)
    return write(tmp_path / f"a.{extension}", signal, rate, **CODECS[extension])


@pytest.mark.parametrize("extension", list(CODECS))
def test_cut_at_half_its_bytes_warns_and_keeps_the_first_half(tmp_path, extension):
    path = recording(tmp_path, extension)
    whole = decode(path, sample_rate=SR)
    assert whole.warning == "" and whole.duration == pytest.approx(10.0, abs=0.01)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    cut = decode(path, sample_rate=SR)
    assert cut.warning.startswith(f"truncated or corrupt after {cut.duration:.1f} s")
    assert cut.warning.endswith("kept that part") and "\n" not in cut.warning
    # lossy codecs spend their bytes unevenly over time: "about half" is 35-55 % of 10 s
    assert 3.5 < cut.duration < 5.5
    assert cut.samples.size == pytest.approx(cut.duration * SR, abs=SR * 0.05)
    kept = min(cut.samples.size, whole.samples.size) - SR // 10  # the codec's last block may differ
    np.testing.assert_allclose(cut.samples[:kept], whole.samples[:kept], atol=1e-4)


def test_a_cut_wav_keeps_exactly_the_bytes_present(tmp_path):
    path = write(tmp_path / "cut.wav", tone(1000.0, 2.0), subtype="PCM_16")
    header = 44  # soundfile's PCM WAV header; 2 bytes a frame
    path.write_bytes(path.read_bytes()[: header + 2 * 30_000])
    cut = decode(path, sample_rate=SR)
    assert cut.samples.size == 30_000
    assert cut.warning == f"truncated or corrupt after {30_000 / SR:.1f} s of the 2.0 s its header promised; kept that part"


def test_an_mp3_without_a_frame_count_promises_nothing(tmp_path):
    """Without its Xing/Info header an intact MP3's length is an estimate: no truncation warning."""
    signal = tone(1000.0, 3.0) + noise(3.0)
    path = write(tmp_path / "a.mp3", np.stack([signal, signal[::-1]], axis=1), **CODECS["mp3"])
    data = bytearray(path.read_bytes())
    at = data.find(b"Xing")
    assert 0 <= at < 64
    data[at : at + 4] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    assert decode(path, sample_rate=SR).warning == ""
    estimate = soundfile.info(str(path)).frames  # libsndfile now estimates from the bytes: too many
    assert estimate > 1.1 * decode(path, sample_rate=SR).samples.size


def test_an_mp3_decodes_the_same_in_blocks_as_in_one_read(tmp_path):
    """soundfile seeks after every read, and mpg123 re-enters a VBR stream there without the
    frame before: some 560 samples after each block boundary (65,536 frames) came out wrong."""
    signal = tone(1000.0, 10.0) + noise(10.0)
    path = write(tmp_path / "a.mp3", signal, **CODECS["mp3"], bitrate_mode="VARIABLE", compression_level=0.5)
    in_one_read, _ = soundfile.read(str(path), dtype="float32")  # one call; its seek to 0 moves the last bits
    np.testing.assert_allclose(decode(path, sample_rate=SR).samples, in_one_read, atol=1e-6)


MPEG2_LAYER3_KBPS = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)  # by bitrate index


def id3v2_tag(title: str, *, padding: int) -> bytes:
    """An ID3v2.3 tag as tagging tools put before the first frame: a title (TIT2), then
    ``padding`` zero bytes (room left for edits; cover art makes tags as large)."""
    frame = b"TIT2" + (len(title) + 1).to_bytes(4, "big") + b"\0\0" + b"\0" + title.encode("latin-1")
    size = len(frame) + padding
    return b"ID3\3\0\0" + bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0)) + frame + bytes(padding)


def without_xing_frame(path: Path, *, prefix: bytes = b"") -> Path:
    """Copy of a 22,050 Hz MP3 from soundfile with its first frame, the Xing/Info header, cut out
    (what an old encoder or a stream cut from a recorder looks like), behind ``prefix``."""
    data = path.read_bytes()
    header = int.from_bytes(data[:4], "big")
    assert header >> 21 == 0x7FF and (header >> 19) & 3 == 2 and (header >> 17) & 3 == 1  # MPEG-2 layer III
    assert (header >> 10) & 3 == 0 and (b"Xing" in data[4:40] or b"Info" in data[4:40])  # 22,050 Hz
    length = 72_000 * MPEG2_LAYER3_KBPS[(header >> 12) & 15] // SR + ((header >> 9) & 1)
    assert int.from_bytes(data[length : length + 2], "big") >> 5 == 0x7FF  # the next frame starts there
    stripped = path.with_name(f"{path.stem}-no-xing.mp3")
    stripped.write_bytes(prefix + data[length:])
    return stripped


def aligned(longer: np.ndarray, reference: np.ndarray, max_lag: int) -> int:
    """The lag (0 to ``max_lag`` samples) at which ``reference`` best matches ``longer``'s first second."""
    window = reference[SR // 2 : SR]
    errors = [np.abs(longer[lag + SR // 2 : lag + SR] - window).max() for lag in range(max_lag + 1)]
    return int(np.argmin(errors))


ENCODER_SLACK = 2 * 1152  # the encoder's delay (LAME: 576, decoder 529) and end padding: only a LAME tag trims them


@pytest.mark.parametrize("bitrate_mode,prefix", [("VARIABLE", b""), ("CONSTANT", b""),
                                                 ("VARIABLE", id3v2_tag("wren at dawn", padding=200_000))],
                         ids=["vbr", "cbr", "vbr-id3v2-200kB"])
def test_an_mp3_without_its_xing_header_keeps_all_its_audio(tmp_path, bitrate_mode, prefix):
    """libsndfile stops an MP3 without a frame count at its size/bitrate estimate: for this VBR
    file, 38 % of it. Every frame decodes now, the same samples as with the header."""
    signal = tone(1000.0, 10.0) + noise(10.0)
    path = write(tmp_path / "a.mp3", signal, **CODECS["mp3"], bitrate_mode=bitrate_mode, compression_level=0.5)
    reference = decode(path, sample_rate=SR)  # with its header: the encoder's delay and padding trimmed
    assert reference.samples.size == signal.size and reference.warning == ""
    stripped = without_xing_frame(path, prefix=prefix)
    if bitrate_mode == "VARIABLE" and not prefix:  # what libsndfile alone keeps (a tag's bytes count too)
        assert soundfile.info(str(stripped)).frames < 0.5 * signal.size
    decoded = decode(stripped, sample_rate=SR)
    assert decoded.warning == ""
    assert signal.size <= decoded.samples.size <= signal.size + ENCODER_SLACK
    assert decoded.duration == pytest.approx(decoded.samples.size / SR)
    lag = aligned(decoded.samples, reference.samples, ENCODER_SLACK)
    assert decoded.samples.size - lag >= reference.samples.size  # nothing missing at the end
    np.testing.assert_allclose(decoded.samples[lag : lag + reference.samples.size], reference.samples, atol=1e-6)


def test_a_cut_mp3_without_its_xing_header_keeps_what_decoded_and_warns(tmp_path):
    """Read to the end, mpg123 reports the last frame cut short (a cut exactly between frames
    cannot be told from an intact file: nothing says how long it was)."""
    signal = tone(1000.0, 10.0) + noise(10.0)
    stripped = without_xing_frame(write(tmp_path / "a.mp3", signal, **CODECS["mp3"]))
    whole = decode(stripped, sample_rate=SR)
    data = stripped.read_bytes()
    stripped.write_bytes(data[: len(data) // 2])
    cut = decode(stripped, sample_rate=SR)
    assert cut.warning.startswith(f"truncated or corrupt after {cut.duration:.1f} s (")
    assert cut.warning.endswith("kept that part") and "\n" not in cut.warning
    assert 3.5 < cut.duration < 5.5  # VBR spends its bytes unevenly: "about half" of 10 s
    assert cut.samples.size > soundfile.info(str(stripped)).frames  # libsndfile's estimate: 2 s
    np.testing.assert_array_equal(cut.samples, whole.samples[: cut.samples.size])


def test_a_frame_count_only_mpg123_reads_is_still_used(tmp_path, monkeypatch):
    """Should mpg123 find a frame count that ``_mp3_counts_frames`` misses, the pipe's stream
    is seekable, and a soundfile read, which seeks after reading, would fail on it."""
    import soundception.featurize.audio as audio_module

    signal = tone(1000.0, 3.0) + noise(3.0)
    path = write(tmp_path / "a.mp3", signal, **CODECS["mp3"])
    monkeypatch.setattr(audio_module, "_mp3_counts_frames", lambda path: False)
    decoded = decode(path, sample_rate=SR)
    assert decoded.warning == "" and decoded.samples.size == signal.size


@pytest.mark.parametrize("extension", ["ogg", "opus"])
def test_an_ogg_cut_between_pages_warns(tmp_path, extension):
    """Cut exactly where a page starts: every page is whole, but none carries end-of-stream."""
    path = recording(tmp_path, extension)
    data = path.read_bytes()
    page = data.find(b"OggS", len(data) // 2)
    assert data[page + 5] & 0x04 == 0  # not the last page
    path.write_bytes(data[:page])
    cut = decode(path, sample_rate=SR)
    assert "no end-of-stream page" in cut.warning and 3.5 < cut.duration < 6.5


FFMPEG = shutil.which("ffmpeg")


def m4a_file(path):
    """A real AAC-in-MP4 file of a 1 kHz tone when ffmpeg is here to make one; else just the
    start of an MP4 container (enough for the hint: neither decoder gets further)."""
    if FFMPEG:
        wav = write(path.with_suffix(".wav"), tone(1000.0, 2.0))
        subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", str(path)], check=True)
    else:
        path.write_bytes(b"\0\0\0\x20ftypM4A \0\0\x02\0M4A mp42isom\0\0\0\0" + bytes(range(256)) * 8)
    return path


@pytest.mark.parametrize("extension", [".m4a", ".aac", ".wma"])
def test_formats_beyond_libsndfile_decode_with_ffmpeg_or_say_to_install_it(tmp_path, extension):
    if FFMPEG and extension == ".m4a":  # ffmpeg is installed: a real m4a decodes
        decoded = decode(m4a_file(tmp_path / "a.m4a"), sample_rate=SR)
        assert decoded.duration == pytest.approx(2.0, abs=0.1) and decoded.warning == ""
        spectrum = np.abs(np.fft.rfft(decoded.samples))
        assert np.fft.rfftfreq(decoded.samples.size, 1 / SR)[spectrum.argmax()] == pytest.approx(1000.0, abs=2)
        return
    if FFMPEG:
        pytest.skip("ffmpeg is installed: its hint is tested with ffmpeg off the PATH")
    path = m4a_file(tmp_path / f"a{extension}")
    with pytest.raises(DecodeError) as error:
        decode(path, sample_rate=SR)
    message = str(error.value)
    assert message.startswith(f"cannot decode a{extension}: this format needs ffmpeg (apt install ffmpeg")
    assert "soundfile: " in message and "\n" not in message


def test_ffmpeg_hint_when_ffmpeg_is_off_the_path(tmp_path):
    """Runs in a subprocess whose PATH is empty, so this holds with or without ffmpeg installed."""
    path = m4a_file(tmp_path / "a.m4a")
    script = ("from featurize.audio import decode, DecodeError\n"
              f"try: decode({str(path)!r}, sample_rate={SR})\n"
              "except DecodeError as error: print(error)\n")
    repository = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PATH": "", "PYTHONPATH": str(repository)}
    result = subprocess.run([sys.executable, "-c", script], env=environment, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.startswith("cannot decode a.m4a: this format needs ffmpeg (apt install ffmpeg / conda install")


def test_a_broken_file_of_a_libsndfile_format_gets_no_ffmpeg_hint(tmp_path):
    path = tmp_path / "notes.flac"
    path.write_text("field notes, not audio\n" * 40)
    with pytest.raises(DecodeError, match="^cannot decode audio: soundfile: .*; audioread: ") as error:
        decode(path, sample_rate=SR)
    assert "ffmpeg" not in str(error.value)


# ---- label CSVs ---------------------------------------------------------------------------

GOOD_ROWS = {"x/a.wav": ("wren", ("robin", "tit")), "x/b, the second.wav": ("robin", ()), "x/c.wav": ("", ())}


@pytest.mark.parametrize("content", [
    b"path,label,background\nx/a.wav,wren,robin;tit\n\"x/b, the second.wav\",robin\nx/c.wav,\n",
    b"\xef\xbb\xbfpath\tlabel\tbackground\r\nx/a.wav\twren\trobin;tit\r\nx/b, the second.wav\trobin\r\nx/c.wav\t\r\n",
    b"# made by hand\n\n  # indented comment, with, commas and a \"quote\n"
    b"x/a.wav,wren,robin; tit,,\n\n./x/b, the second.wav,robin\n".replace(b"./x/b, the second.wav", b"\"./x/b, the second.wav\"")
    + b"x/c.wav,,\n",
], ids=["csv-header-quoted", "tsv-bom-crlf", "comments-blanks-trailing"])
def test_label_csv_accepts_the_usual_layouts(tmp_path, content):
    from soundception.featurize.labels import read_csv

    path = tmp_path / "labels.csv"
    path.write_bytes(content)
    labels, conflicts, _ = read_csv(path)
    assert labels == GOOD_ROWS and conflicts == {}


@pytest.mark.parametrize("content,line,reason", [
    (b"path,label\nx/a.wav,wren\nx/b.wav,robin,tit,extra\n", 3, "4 field(s), expected path,label[,background]"),
    (b"x/a.wav;wren\n", 1, "1 field(s), expected path,label[,background] separated by ','"),
    (b"path,label\nx/a.wav,\"wren\nx/b.wav,robin\nx/c.wav,tit\n", 2, "malformed quoting"),
    (b"x/a.wav,\"wren\nx/b.wav,robin\"\nx/c.wav,tit\n", 1, "a quoted field runs on to line 2"),
    (b"x/a.wav,wren\nx/b.wav,\"rob\"in\n", 2, "malformed quoting"),
    (b"x/a.wav,wren\nx/b.wav,rob\x00in\n", 2, "control character U+0000 at column 12"),
    (b"x/a.wav,wren\n\n\nx/\x1bb.wav,robin\n", 4, "control character U+001B"),
    (b"x/a.wav,wr\ten\n", 1, "U+0009 (tab) inside a field"),
    (b"path,label\nx/a.wav,wren\nx/b.wav,r\xf6tkehlchen\n", 3, "not UTF-8 (byte 33 is 0xf6)"),  # 11 + 13 + 9 bytes before it
    (b"\xef\xbb\xbfx/a.wav,\xff\n", 1, "not UTF-8 (byte 11 is 0xff)"),
], ids=["five-fields", "wrong-delimiter", "unterminated-quote", "field-over-lines", "stray-quote", "nul",
        "escape", "tab-in-csv-field", "latin-1", "bom-then-bad-byte"])
def test_a_malformed_label_csv_stops_with_its_file_and_line(tmp_path, content, line, reason):
    from soundception.featurize.labels import MetadataError, read_csv

    path = tmp_path / "labels.csv"
    path.write_bytes(content)
    with pytest.raises(MetadataError) as error:
        read_csv(path)
    message = str(error.value)
    assert message.startswith(f"{path}: line {line}: ") and reason in message and "\n" not in message
    assert isinstance(error.value, ValueError)  # the command line reports ValueErrors as one line


def test_a_malformed_label_csv_stops_before_the_store_is_written(tmp_path, small_corpus):
    from soundception.featurize.labels import MetadataError
    from soundception.featurize.pipeline import featurize_store

    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("low/low0.wav,low\nlow/low1.wav,\"low\nhigh/high0.wav,high\n")
    with pytest.raises(MetadataError, match="line 2: "):
        featurize_store(small_corpus, str(tmp_path / "s.zarr"), metadata=csv_path, labels="csv")
    assert not (tmp_path / "s.zarr").exists()


# ---- audio on object storage (moto S3 on loopback) ----------------------------------------


SECRET = {"key": "AKIA-NOT-IN-MESSAGES", "secret": "s3cr3t-not-in-messages"}  # moto takes any pair


def test_audio_from_s3_lists_and_decodes_like_the_local_copy(tmp_path, s3_endpoint, monkeypatch):
    import s3fs

    copies = tmp_path / "copies"
    copies.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(copies))  # where decode's temporary copies go

    from soundception.featurize.labels import discover_audio, label_recordings

    local = tmp_path / "audio"
    write(local / "low" / "a.wav", tone(1000.0, 1.5) + noise(1.5, seed=1), subtype="PCM_16")
    write(local / "low" / "deeper" / "b.flac", tone(700.0, 2.0) + noise(2.0, seed=2))
    write(local / "high" / "c.flac", tone(5000.0, 1.0, sample_rate=44100), 44100)
    write(local / ".hidden" / "d.wav", tone(300.0, 1.0))
    (local / "high" / "notes.txt").write_text("not audio")
    (tmp_path / "labels.csv").write_text("path,label\nlow/a.wav,low\nhigh/c.flac,high\ngone.wav,low\n")
    options = {**s3_endpoint, **SECRET}
    filesystem = s3fs.S3FileSystem(**options)
    filesystem.mkdir("recordings")
    filesystem.put(str(local) + "/", "recordings/field/audio", recursive=True)
    filesystem.put(str(tmp_path / "labels.csv"), "recordings/field/labels.csv")
    url = "s3://recordings/field/audio"
    assert filesystem.exists("recordings/field/audio/.hidden/d.wav")  # uploaded, and must be skipped

    local_ids = [p.relative_to(local).as_posix() for p in discover_audio(local)]
    assert local_ids == ["high/c.flac", "low/a.wav", "low/deeper/b.flac"]
    assert discover_audio(url + "/", storage_options=options) == [f"{url}/{i}" for i in local_ids]

    remote = label_recordings(url, source="folders", storage_options=options)
    here = label_recordings(local, source="folders")
    assert [(r.id, r.label) for r in remote.recordings] == [(r.id, r.label) for r in here.recordings]
    assert [r.path for r in remote.recordings] == [f"{url}/{i}" for i in local_ids]
    from_csv = label_recordings(url, metadata="s3://recordings/field/labels.csv", storage_options=options)
    assert {r.id: (r.label, bool(r.problem)) for r in from_csv.recordings} == {
        "high/c.flac": ("high", False), "low/a.wav": ("low", False), "low/deeper/b.flac": ("", False),
        "gone.wav": ("", True)}

    for file_id in local_ids:
        mine = decode(f"{url}/{file_id}", sample_rate=SR, storage_options=options)
        theirs = decode(local / file_id, sample_rate=SR)
        np.testing.assert_array_equal(mine.samples, theirs.samples)
        assert mine.duration == theirs.duration and mine.warning == theirs.warning == ""
    assert not list(copies.iterdir())  # every temporary copy deleted


def test_s3_errors_are_one_line_and_carry_no_credentials(tmp_path, s3_endpoint):
    import s3fs

    from soundception.featurize.audio import DecodeError
    from soundception.featurize.labels import discover_audio

    options = {**s3_endpoint, **SECRET}
    s3fs.S3FileSystem(**options).mkdir("empty-bucket")
    with pytest.raises(DecodeError) as missing:
        decode("s3://empty-bucket/nope.wav", sample_rate=SR, storage_options=options)
    with pytest.raises(FileNotFoundError) as no_folder:
        discover_audio("s3://empty-bucket/audio", storage_options=options)
    wrong_key = {**options, "secret": "another-s3cr3t-value"}  # moto accepts it: a refused listing instead
    with pytest.raises(DecodeError) as no_bucket:
        decode("s3://no-such-bucket/a.wav", sample_rate=SR, storage_options=wrong_key)
    unreachable = {**options, "endpoint_url": "http://127.0.0.1:9",  # the discard port: nothing listens
                   "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    with pytest.raises(DecodeError) as no_server:
        decode("s3://empty-bucket/a.wav", sample_rate=SR, storage_options=unreachable)
    assert str(no_server.value).startswith("cannot read s3://empty-bucket/a.wav: EndpointConnectionError: ")
    assert str(missing.value) == "not a file: s3://empty-bucket/nope.wav"
    assert str(no_folder.value) == "audio directory not found: s3://empty-bucket/audio"
    for error in (missing, no_folder, no_bucket, no_server):
        text = str(error.value)
        assert "\n" not in text and "s3cr3t" not in text and "AKIA" not in text
