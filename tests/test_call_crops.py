"""``train --call-crops``: training crops drawn to contain an annotated call.

The checks are hand-computed: which starts hold a call follows from the call's columns and the
window width; the store's call columns from the event times and the image's pixels per second.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import noise, tone, write

from soundception.featurize.pipeline import featurize_store
from soundception.shared import FeatureStore, FeaturizerConfig
from soundception.train.config import RunConfig, UserError
from soundception.train.dataset import WindowSampler, call_columns, call_start, sample_windows

WIDTH = 50
FILES = np.array([3, 7, 9])
N_FRAMES = np.array([400, 40, 300])  # file 7 is narrower than a window
LABELS = np.array([0, 1, 1])
# file 3: a 20 px call at 100 and a 120 px call (longer than the window) at 250; file 7 none; file 9 one
CALLS = [np.array([[100, 120], [250, 370]]), np.zeros((0, 2), dtype=np.int64), np.array([[280, 300]])]


def draw(seed: int, fraction: float, calls=CALLS, size: int = 4000) -> list[tuple[int, int]]:
    return sample_windows(np.random.default_rng(seed), FILES, N_FRAMES, LABELS, batch_size=size,
                          read_width=WIDTH, balanced=False, calls=calls, call_fraction=fraction)


def holds_a_call(file: int, start: int) -> bool:
    for first, stop in CALLS[list(FILES).index(file)]:
        if stop - first <= WIDTH and start <= first and start + WIDTH >= stop:
            return True
        if stop - first > WIDTH and first <= start and start + WIDTH <= stop:
            return True
    return False


def test_no_call_crops_draws_exactly_the_uniform_crops():
    before = sample_windows(np.random.default_rng(5), FILES, N_FRAMES, LABELS, batch_size=64, read_width=WIDTH,
                            balanced=False)
    assert draw(5, 0.0, size=64) == before


def test_every_crop_of_a_file_with_calls_holds_one_and_starts_cover_the_allowed_range():
    windows = draw(1, 1.0)
    starts: dict[int, set[int]] = {3: set(), 7: set(), 9: set()}
    for file, start in windows:
        starts[file].add(start)
        if file != 7:
            assert holds_a_call(file, start), (file, start)
    assert starts[7] == {0}  # no calls and narrower than the window: the reader pads
    # the short call at [100, 120): starts 70..100; the long one [250, 370): starts 250..320
    assert starts[3] == set(range(70, 101)) | set(range(250, 321))
    # file 9's call [280, 300): starts 250..280, capped at the last start inside the image (250)
    assert starts[9] == {250}


def test_a_fraction_of_crops_goes_to_calls_the_rest_stay_uniform():
    windows = [(f, s) for f, s in draw(2, 0.5, size=20000) if f == 3]
    on_call = np.mean([holds_a_call(f, s) for f, s in windows])
    uniform_share = (31 + 71) / 351  # uniform starts 0..350 that happen to hold a call
    expected = 0.5 + 0.5 * uniform_share
    assert abs(on_call - expected) < 0.02, (on_call, expected)


def test_call_start_is_uniform_over_its_range():
    rng = np.random.default_rng(0)
    draws = np.array([call_start(rng, np.array([100, 120]), WIDTH, 350) for _ in range(31000)])
    counts = np.bincount(draws - 70, minlength=31)
    assert draws.min() == 70 and draws.max() == 100 and counts.size == 31
    assert counts.min() > 800 and counts.max() < 1200  # 1000 expected per start


CONFIG = FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=2.0)


@pytest.fixture(scope="module")
def store_with_calls(tmp_path_factory):
    root = tmp_path_factory.mktemp("calls")
    for k, seconds in enumerate((6.0, 3.0)):
        write(root / "audio" / f"XC{k}.wav", tone(2000.0 + 500 * k, seconds, amplitude=0.3) + noise(seconds, seed=k))
    table = root / "calls.csv"
    table.write_text("path,start,end,label\nXC0.wav,1.5,2.25,sp0\nXC0.wav,4.0,4.1,sp1\nXC1.wav,0.3,0.9,sp1\n")
    featurize_store(root / "audio", str(root / "s.zarr"), config=CONFIG, annotations=table)
    return FeatureStore(str(root / "s.zarr"))


def test_call_columns_follow_the_event_times(store_with_calls):
    store = store_with_calls
    pps = CONFIG.pixels_per_second  # 85.33 px per s
    first = list(store.ids).index("XC0.wav")
    columns = call_columns(store, np.array([first]))[0]
    expected = [[int(np.floor(1.5 * pps)), int(np.ceil(2.25 * pps))], [int(np.floor(4.0 * pps)), int(np.ceil(4.1 * pps))]]
    assert columns.tolist() == expected == [[128, 192], [341, 350]]
    sampler = WindowSampler(store, np.arange(store.n_files), batch_size=256, read_width=40, seed=0, stop_step=1,
                            call_fraction=1.0)
    for file, start in sampler.batch(0):
        calls = call_columns(store, np.array([file]))[0]
        assert any(start <= a and start + 40 >= b or a <= start and start + 40 <= b for a, b in calls), (file, start)


def test_call_crops_on_a_store_without_calls_is_refused_in_one_line(tmp_path, store_with_calls):
    from soundception.train.loop import train

    bare = tmp_path / "audio"
    write(bare / "sp9" / "XC9.wav", tone(1500.0, 3.0, amplitude=0.3))
    featurize_store(bare, str(tmp_path / "bare.zarr"), config=CONFIG, metadata=None, labels="folders")
    with pytest.raises(UserError, match="--call-crops needs call annotations") as error:
        train(RunConfig(store=str(tmp_path / "bare.zarr"), out=str(tmp_path / "run"), call_crops=1.0), progress=False)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match=r"call_crops must be a fraction in \[0, 1\]"):
        RunConfig(store="s", out="o", call_crops=1.5)


def test_call_crops_whose_calls_are_all_in_validation_is_refused_in_one_line(tmp_path):
    from soundception.train.dataset import split_files
    from soundception.train.loop import train

    audio = tmp_path / "audio"
    for k in range(4):
        write(audio / f"sp{k % 2}" / f"XC{k}.wav", tone(1500.0 + 700 * (k % 2), 3.0, amplitude=0.3) + noise(3.0, seed=k))
    store = str(tmp_path / "s.zarr")
    featurize_store(audio, store, config=CONFIG, metadata=None, labels="folders")
    opened = FeatureStore(store)
    split = split_files(opened, validation_fraction=0.25, seed=0)
    held = split.validation_ids[0]
    (tmp_path / "calls.csv").write_text(f"path,start,end,label\n{held},0.5,1.0,{held.split('/')[0]}\n")
    featurize_store(audio, store, config=CONFIG, metadata=None, labels="folders", annotations=tmp_path / "calls.csv")
    with pytest.raises(UserError, match="all in the validation split") as error:
        train(RunConfig(store=store, out=str(tmp_path / "run"), call_crops=0.5, validation_fraction=0.25, seed=0),
              progress=False)
    assert "\n" not in str(error.value)
