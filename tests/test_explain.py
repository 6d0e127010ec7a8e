"""``train.explain``: the drawing checked pixel by pixel on hand-made attention, and the whole path on
the session's tiny trained run against a direct forward pass of its model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from soundception.shared.reader import FeatureStore
from soundception.train.config import UserError, crop_width_px
from soundception.train.explain import MARK_BAND, Attention, draw, explain_file, repeat_times
from soundception.train.trained import load_trained_model
from soundception.train.windows import window_starts


def read_png(path) -> tuple[np.ndarray, dict[str, str]]:
    """RGB pixels ``(rows, columns, 3)`` uint8 and the PNG's text chunks."""
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB")), dict(picture.text)


def crop(pixels: np.ndarray, box: tuple[int, int, int, int], inset: int = 3) -> np.ndarray:
    """The inside of a panel ``(left, top, right, bottom)``, frame and tick marks excluded."""
    left, top, right, bottom = box
    return pixels[top + inset:bottom - inset, left + inset:right - inset]


def grey(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float64).mean(axis=-1)


# --- draw on hand-made arrays -------------------------------------------------------------------------

def test_draw_puts_each_attention_where_it_belongs(tmp_path):
    """Black image; temporal attention 1 on the left half, 0 on the right; one hot time-frequency cell
    in the top row (highest frequencies), third of ten columns. Each must show up exactly there."""
    temporal = np.r_[np.ones(10), np.zeros(10)]
    time_frequency = np.zeros((2, 10))
    time_frequency[0, 2] = 1.0
    attention = Attention(probabilities=np.array([0.1, 0.7, 0.2]), temporal=temporal, time_frequency=time_frequency)
    out = tmp_path / "explain.png"
    drawing = draw(np.zeros((3, 64, 320), np.uint8), attention, out, pixels_per_second=64.0, max_frequency=11025.0,
                   class_names=["Parus major", "Turdus merula", "Erithacus rubecula"], file_id="a/b.wav")
    pixels, text = read_png(out)

    image = grey(crop(pixels, drawing.panels["image"]))
    band = image[: int(MARK_BAND * image.shape[0]) - 4]
    half = band.shape[1] // 2
    assert band[:, 5:half - 5].min() > 250  # white marks over the attended half
    assert band[:, half + 5:-5].max() < 5  # none over the other half
    assert image[len(image) // 2].max() < 5  # the black image itself is untouched below the band

    curve = grey(crop(pixels, drawing.panels["temporal"]))
    middle = curve[len(curve) // 2]  # attention 0.5 on the curve's scale: filled left, background right
    assert middle[5:half - 5].max() < 240 and middle[half + 5:-5].min() > 250

    tf = grey(crop(pixels, drawing.panels["time_frequency"], inset=0))
    rows, columns = tf.shape
    hot = tf[rows // 4, int(columns * 0.25)]
    assert hot > 250  # top row, third column: white
    assert tf[rows // 4, int(columns * 0.75)] < 5  # time reversed would be here
    assert tf[3 * rows // 4, int(columns * 0.25)] < 5  # frequency flipped would be here
    assert np.mean(tf > 128) == pytest.approx(1 / 20, abs=0.01)  # one cell of twenty

    assert drawing.title == text["Title"]
    assert "Turdus merula 70.0 %, Erithacus rubecula 20.0 %, Parus major 10.0 %" in drawing.title


def test_repeat_times_are_the_multiples_of_the_duration_inside_the_window():
    assert repeat_times(2.0, 8.0, duration=3.0, image_seconds=9.0, pixel_seconds=0.01) == [3.0, 6.0]
    assert repeat_times(0.0, 20.0, duration=3.0, image_seconds=9.0, pixel_seconds=0.01) == [3.0, 6.0]
    # an image one rounding pixel longer than a recording that was not repeated
    assert repeat_times(0.0, 4.0, duration=3.0, image_seconds=3.01, pixel_seconds=0.0117) == []


# --- the whole path on a trained run ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(trained_run):
    store = FeatureStore(trained_run.store)
    trained = load_trained_model(trained_run.checkpoint)
    pixels_per_second = store.config.pixels_per_second
    image_seconds = store.table["n_frames"] / pixels_per_second
    repeated = np.flatnonzero(image_seconds > 1.5 * store.table["duration"])
    assert len(repeated), "the fixture should hold self-concatenated clips"
    return trained_run, store, trained, int(repeated[0])


@torch.no_grad()
def direct_forward(trained, window: np.ndarray):
    """Softmax and temporal attention of the model on one uint8 window, written out here."""
    model = trained.model
    images = torch.from_numpy(window[None]).float() / 255.0
    output = model(model.normalize(images))
    return torch.softmax(output.logits, dim=1)[0].numpy(), output.temporal_attention[0].numpy()


@pytest.mark.parametrize("case", ["inside", "padded"])
def test_explain_file_matches_the_model_and_draws_it(run, tmp_path, case):
    trained_run, store, trained, repeated = run
    pixels_per_second = store.config.pixels_per_second
    n_frames = int(store.table["n_frames"][repeated])
    duration = float(store.table["duration"][repeated])
    assert n_frames / pixels_per_second == pytest.approx(2 * duration, abs=0.05)  # the clip shown twice
    if case == "inside":  # an explicit start, training crop, across the repeat
        start, seconds, width = duration - 1.0, None, trained.crop_width
        start_px = int(round(start * pixels_per_second))
        window = store.image(repeated)[:, :, start_px:start_px + width]
    else:  # a window wider than the image: zero-padded at the end, like evaluation
        start, seconds, start_px, width = 0.0, 10.0, 0, crop_width_px(10.0, store.config)
        window = np.pad(store.image(repeated), ((0, 0), (0, 0), (0, width - n_frames)))
    file_id = str(store.ids[repeated])
    out = tmp_path / "explain.png"

    result = explain_file(trained_run.checkpoint, trained_run.store, file_id, out, start=start, seconds=seconds)

    probabilities, temporal = direct_forward(trained, window)
    assert result["start_s"] == pytest.approx(start_px / pixels_per_second)
    assert result["seconds"] == pytest.approx(width / pixels_per_second)
    np.testing.assert_allclose(result["temporal_attention"], temporal, rtol=1e-4, atol=1e-6)
    top = int(np.argmax(probabilities))
    assert result["top"][0][0] == trained.classes[top]
    assert result["top"][0][2] == pytest.approx(probabilities[top], abs=1e-5)
    assert [p for _, _, p in result["top"]] == sorted((p for _, _, p in result["top"]), reverse=True)

    pixels, text = read_png(out)
    assert trained.class_names[top] in text["Title"] and file_id in text["Title"]
    for panel in ("temporal", "time_frequency"):
        assert grey(crop(pixels, result["panels"][panel])).std() > 10, f"{panel} panel is flat"
    assert result["repeats_s"] == pytest.approx([duration])  # once; the second copy ends with the image


def test_explain_file_picks_and_clamps_windows(run, tmp_path):
    trained_run, store, trained, repeated = run
    pixels_per_second = store.config.pixels_per_second
    index = int(np.argmax(store.table["n_frames"]))  # the longest image: several windows to choose from
    file_id, n_frames, width = str(store.ids[index]), int(store.table["n_frames"][index]), trained.crop_width
    starts = window_starts(n_frames, width, width // 2)
    assert len(starts) > 2
    image = store.image(index)
    per_window = np.stack([direct_forward(trained, image[:, :, s:s + width])[0] for s in starts])
    top_class = int(np.argmax(per_window.mean(axis=0)))

    chosen = explain_file(trained_run.checkpoint, trained_run.store, file_id, tmp_path / "auto.png")
    chosen_px = int(round(chosen["start_s"] * pixels_per_second))
    assert chosen_px in starts  # one of prediction's windows, where the file's top species is likeliest
    # (neighbouring windows 1 px apart score alike: compare scores, not positions)
    assert per_window[starts.index(chosen_px), top_class] >= per_window[:, top_class].max() - 1e-4
    assert per_window[:, top_class].max() - per_window[:, top_class].min() > 1e-3  # the choice matters

    late = explain_file(trained_run.checkpoint, trained_run.store, file_id, tmp_path / "late.png",
                        start=(n_frames - 10) / pixels_per_second)
    assert late["start_s"] == pytest.approx((n_frames - width) / pixels_per_second)  # moved back inside


def _copy_store(trained_run, tmp_path) -> tuple[str, zarr.Group]:
    copy = str(tmp_path / "copy.zarr")
    shutil.copytree(trained_run.store, copy)
    return copy, zarr.open_group(copy, mode="r+", use_consolidated=False)


def test_explain_file_refuses_in_one_line(run, tmp_path):
    trained_run, store, _, _ = run
    file_id = str(store.ids[0])
    checkpoint, url = trained_run.checkpoint, trained_run.store

    def refusal(store_url: str, name: str, **options) -> str:
        with pytest.raises(UserError) as caught:
            explain_file(checkpoint, store_url, name, tmp_path / "never.png", **options)
        message = str(caught.value)
        assert "\n" not in message
        return message

    assert file_id in refusal(url, file_id[:-1])  # a typo: the close match is named
    assert "outside" in refusal(url, file_id, start=1000.0)
    assert "outside" in refusal(url, file_id, start=-1.0)

    failed, group = _copy_store(trained_run, tmp_path)
    group["status"][0] = "failed"
    group["error"][0] = "could not decode"
    assert "failed" in refusal(failed, file_id) and "could not decode" in refusal(failed, file_id)

    other, group = _copy_store(trained_run, tmp_path / "other")
    group.attrs["config_hash"] = "0" * 16
    assert "different config" in refusal(other, file_id)
    assert not (tmp_path / "never.png").exists()


def test_explain_command_from_audio_and_from_store_draw_the_same_window(run, tmp_path):
    from click.testing import CliRunner

    from soundception.cli import main

    trained_run, store, trained, _ = run
    file_id = "sp01/XC000008.flac"
    audio = tmp_path / "one.flac"
    shutil.copy(trained_run.audio / file_id, audio)
    outputs = {}
    for name, source in (("audio", [str(audio)]), ("store", ["--store", trained_run.store, "--file", file_id])):
        out = tmp_path / f"{name}.png"
        result = CliRunner().invoke(main, ["explain", "--checkpoint", str(trained_run.checkpoint), *source,
                                           "--out", str(out), "--start", "0.5"])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"wrote {out}")
        outputs[name] = read_png(out)[0]
    # the same audio featurized with the checkpoint's config: the same image, attention and picture
    assert outputs["audio"].shape == outputs["store"].shape
    assert np.abs(outputs["audio"].astype(int) - outputs["store"].astype(int)).mean() < 1.0
    refused = CliRunner().invoke(main, ["explain", "--checkpoint", str(trained_run.checkpoint), "--out",
                                        str(tmp_path / "x.png")])
    assert refused.exit_code == 2 and "give either AUDIO or both --store and --file" in refused.output


def test_explain_from_audio_reads_the_checkpoint_once_and_leaves_only_the_picture(run, tmp_path, monkeypatch):
    import tempfile

    import torch
    from click.testing import CliRunner

    from soundception.cli import main

    trained_run = run[0]
    audio = tmp_path / "audio" / "one.flac"
    audio.parent.mkdir()
    shutil.copy(trained_run.audio / "sp01/XC000008.flac", audio)
    reads, load = [], torch.load

    def counted_load(path, *args, **kwargs):  # the real torch.load, counted per checkpoint read
        reads.append(str(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted_load)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))
    (tmp_path / "system-tmp").mkdir()
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    result = CliRunner().invoke(main, ["explain", "--checkpoint", str(trained_run.checkpoint), str(audio),
                                       "--out", str(pictures / "one.png")])
    assert result.exit_code == 0, result.output
    assert reads.count(str(trained_run.checkpoint)) == 1
    assert [p.name for p in pictures.iterdir()] == ["one.png"]  # no scratch store beside the picture
    assert list((tmp_path / "system-tmp").iterdir()) == [] and [p.name for p in audio.parent.iterdir()] == ["one.flac"]
