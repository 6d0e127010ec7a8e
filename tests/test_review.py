"""``soundception review``: the sample's counts and weights, the cards' media, and the page in a real Chromium.

The predictions folder is real (tests/review_fixture.py: a journal written by the journal's own
writer, generated audio, the files predict writes beside it); review never needs the checkpoint.
Its scores make the sample countable by hand: 5 recordings x 4 segments of 5 s, top 2 species per
segment, so sp0 (scores 0.01 + 0.05 k, k = 0..19) and sp1 (0.979 - 0.05 k) have 20 detections
each and sp2 none. With ``--top 2 --per-bin 2 --bins 2``: sp0's census is k = 19, 18, then 10
detections below 0.5 (weight 10/2 = 5 each) and 8 from 0.5 up (weight 4); sp1 the mirror image.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner
from PIL import Image

from review_fixture import CLASSES, chirp_frequency, make_predictions
from soundception.cli import main
from soundception.featurize.annotations import read_raven
from soundception.review import DECISION_COLUMNS, ReviewOptions, build_review, stratified_sample
from soundception.review.build import choose_cards, read_run

OPTIONS = ReviewOptions(top=2, per_bin=2, bins=2)
SP0 = np.round(0.01 + 0.05 * np.arange(20), 6)


def page_data(review: Path) -> dict:
    text = (review / "data.js").read_text(encoding="utf-8")
    assert text.startswith("window.REVIEW = ") and text.endswith(";\n")
    return json.loads(text[len("window.REVIEW = "):-2])


@pytest.fixture(scope="module")
def review(tmp_path_factory) -> Path:
    predictions = make_predictions(tmp_path_factory.mktemp("review"))
    summary = build_review(predictions, options=OPTIONS)
    assert summary["cards"] == 12 and summary["failed"] == 1
    return Path(summary["out"])


# ------------------------------------------------------------------------------------------ the sample


def test_the_stratified_sample_takes_the_top_then_bins_with_weights_that_sum_to_the_detections():
    sample = stratified_sample(SP0, top=2, per_bin=2, bins=2, lowest=0.0, rng=np.random.default_rng(0))
    assert sample.index[:2].tolist() == [19, 18]
    assert sample.stratum.tolist() == [-1, -1, 0, 0, 1, 1]
    assert sample.weight.tolist() == [1, 1, 5, 5, 4, 4]  # 10 scores below 0.5 over 2 cards, 8 above over 2
    assert set(sample.index[2:4]) <= set(range(10)) and set(sample.index[4:]) <= set(range(10, 18))
    assert sample.weight.sum() == SP0.size
    # 4 bins of 0.25: 5, 5, 5 and 3 left after the census; a bin with fewer than per_bin gives them all
    sample = stratified_sample(SP0, top=2, per_bin=4, bins=4, lowest=0.0, rng=np.random.default_rng(0))
    assert np.bincount(sample.stratum + 1).tolist() == [2, 4, 4, 4, 3]
    assert sample.weight.tolist() == [1, 1] + [1.25] * 12 + [1, 1, 1]
    assert sample.weight.sum() == SP0.size and len(set(sample.index.tolist())) == sample.index.size
    # scores 0.51..0.96 in 10 bins of 0.1: the five under 0.5 are empty and give nothing, the others 2 each
    sample = stratified_sample(SP0[10:], top=0, per_bin=3, bins=10, lowest=0.0, rng=np.random.default_rng(0))
    assert np.bincount(sample.stratum).tolist() == [0, 0, 0, 0, 0, 2, 2, 2, 2, 2] and sample.weight.sum() == 10
    # over [0.5, 1] (a run's --min-score of 0.5), 5 bins of 0.1 hold 2 each
    sample = stratified_sample(SP0[10:], top=0, per_bin=1, bins=5, lowest=0.5, rng=np.random.default_rng(0))
    assert np.bincount(sample.stratum).tolist() == [1] * 5 and sample.weight.tolist() == [2] * 5


def test_the_sample_is_seeded_per_species(tmp_path):
    run = read_run(make_predictions(tmp_path))
    keys = [c["key"] for c in choose_cards(run, OPTIONS)]
    assert keys == [c["key"] for c in choose_cards(run, OPTIONS)]
    only = choose_cards(run, ReviewOptions(top=2, per_bin=2, bins=2, classes=("Beta finch",)))
    assert [c["key"] for c in only] == [c["key"] for c in choose_cards(run, OPTIONS) if c["class"] == 1]
    assert keys != [c["key"] for c in choose_cards(run, ReviewOptions(top=2, per_bin=2, bins=2, seed=1))]


def test_the_cards_carry_the_hand_counted_weights(review):
    data = page_data(review)
    assert data["columns"] == list(DECISION_COLUMNS)
    for c in (0, 1):
        cards = [card for card in data["cards"] if card["class"] == c]
        assert [card["weight"] for card in cards] == [1, 1, 5, 5, 4, 4]
        assert sum(card["weight"] for card in cards) == 20
    census = {(card["class"], data["recordings"][card["recording"]][0], card["start"], card["end"])
              for card in data["cards"] if card["stratum"] == "top"}
    assert census == {(0, "missing.wav", 15, 20), (0, "missing.wav", 10, 15), (1, "a.wav", 0, 5), (1, "a.wav", 5, 10)}
    assert not [card for card in data["cards"] if card["class"] == 2]


# ------------------------------------------------------------------------------------------ the folder


def test_missing_audio_is_one_failure_line_and_the_other_cards_get_media(review):
    with open(review / "failures.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == ["missing.wav"] and "not a file" in rows[0]["error"]
    for card in page_data(review)["cards"]:
        assert (card["media"] is None) == (card["recording"] == 4)


def test_each_clip_is_the_recording_cut_at_its_span_and_its_image_shows_the_pitch_there(review):
    data = page_data(review)
    card = next(c for c in data["cards"] if c["media"] and c["clip"][0] > 0)
    start, end = card["clip"]
    samples, rate = soundfile.read(review / "media" / f"{card['media']}.ogg")
    assert abs(samples.size / rate - (end - start)) < 0.01
    middle = samples.size // 2  # the chirp's pitch says where in the recording the clip was cut
    window = samples[middle - rate // 8 : middle + rate // 8] * np.hanning(rate // 4)
    peak = np.argmax(np.abs(np.fft.rfft(window, 8 * window.size))) * rate / (8 * window.size)
    assert abs(peak - chirp_frequency(start + middle / rate)) < 40
    image = np.asarray(Image.open(review / "media" / f"{card['media']}.jpg").convert("L"), dtype=float)
    assert image.shape == (128, 300)
    column = 150  # row 0 is the Nyquist frequency, 11,025 Hz, the last row 0 Hz
    frequency = chirp_frequency(start + (column + 0.5) / 300 * (end - start))
    assert abs(np.argmax(image[:, column]) - (1 - frequency / 11025) * 127) <= 3


def test_a_rerun_keeps_the_review_id_and_reuses_the_media(tmp_path):
    predictions = make_predictions(tmp_path)
    out = Path(build_review(predictions, options=OPTIONS)["out"])
    media = {p.name: p.stat().st_mtime_ns for p in (out / "media").iterdir()}
    first = page_data(out)["id"]
    result = CliRunner().invoke(main, ["review", str(predictions), "--top", "2", "--per-bin", "2", "--bins", "2",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"open {out / 'index.html'}")
    assert "12 card(s) of 2 species; 1 recording(s) without audio" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "media").iterdir()} == media
    assert page_data(out)["id"] == first


def test_predictions_without_segments_are_refused_in_one_line(tmp_path):
    predictions = make_predictions(tmp_path, segments=False)
    result = CliRunner().invoke(main, ["review", str(predictions), "--no-progress"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "--segments" in result.output
    assert not (predictions / "review").exists()


def test_a_damaged_classes_table_is_refused_in_one_line(tmp_path):
    predictions = make_predictions(tmp_path)
    (predictions / "classes.csv").write_text("id,name\nsp0,Alpha warbler\n")
    result = CliRunner().invoke(main, ["review", str(predictions), "--no-progress"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "expected the columns class_id,class_name" in result.output and "unexpected" not in result.output


# ------------------------------------------------------------------------------------------ the page


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module: the system's (Debian's ``chromium``), driven by Playwright."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; `make test` installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


def open_page(browser, review: Path, **context):
    page = browser.new_context(**context).new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((review / "index.html").as_uri())
    page.wait_for_selector("body[data-ready]")
    assert not errors
    return page


def test_the_page_opens_from_disk_and_asks_for_nothing_outside_its_folder(browser, review):
    page = browser.new_context().new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto((review / "index.html").as_uri())
    page.wait_for_selector("body[data-ready]")
    data = page_data(review)
    assert page.locator(".card").count() == 12
    assert page.locator(".card audio").count() == sum(1 for c in data["cards"] if c["media"])
    assert page.locator('.card audio:not([preload="none"])').count() == 0
    assert page.locator('.card img:not([loading="lazy"])').count() == 0
    assert page.locator("#species option").all_inner_texts() == [
        "All species (0/12 decided)", "Alpha warbler (0/6 decided)", "Beta finch (0/6 decided)"]
    # each audio element's source decodes, in this browser, to its clip's length
    clips = {f"media/{c['media']}.ogg": c["clip"][1] - c["clip"][0] for c in data["cards"] if c["media"]}
    durations = page.evaluate("""async () => Promise.all([...document.querySelectorAll('.card audio')].map(
        (element) => new Promise((done) => { const audio = new Audio(); audio.preload = 'metadata';
          audio.onloadedmetadata = () => done([element.getAttribute('src'), audio.duration]);
          audio.onerror = () => done([element.getAttribute('src'), -1]); audio.src = element.src; })))""")
    assert len(durations) == page.locator(".card audio").count()
    for source, seconds in durations:
        assert abs(seconds - clips[source]) < 0.05, source
    page.wait_for_function("[...document.querySelectorAll('.card img')].slice(0, 3).every((i) => i.complete "
                           "&& i.naturalWidth === 300)")
    folder = review.as_uri() + "/"
    assert {u for u in requests if not u.startswith(folder)} == set()
    named = {u[len(folder):].split("/")[0] for u in requests}
    assert {"index.html", "data.js", "review.js", "review.css", "media"} <= named
    page.context.close()


def expected_csv(data: dict, decided: dict[int, tuple[str, str]]) -> str:
    """The decisions CSV the contract asks for, written here with Python's csv module."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(DECISION_COLUMNS)
    for i, card in enumerate(data["cards"]):
        if i in decided:
            file, path, _ = data["recordings"][card["recording"]]
            weight = f"{card['weight']:.6f}".rstrip("0").rstrip(".")
            writer.writerow([file, f"{card['start']:.3f}", f"{card['end']:.3f}", data["classes"][card["class"]][0],
                             f"{card['score']:.6f}", *decided[i], weight, path])
    return text.getvalue()


def test_deciding_by_keyboard_and_mouse_survives_a_reload_and_exports_the_expected_tables(browser, review, trained_run,
                                                                                          tmp_path):
    page = open_page(browser, review, accept_downloads=True)
    cards = page.locator(".card")
    focused = page.locator(".card.focused")
    assert focused.get_attribute("data-card") == "0"
    page.keyboard.press("c")                               # card 0 correct
    page.keyboard.press("w")                               # card 1 wrong
    page.keyboard.press("o")                               # card 2: the class list, then sp2
    page.locator(".card select:focus").select_option("2")
    page.keyboard.press("j")                               # 3 -> 4
    page.keyboard.press("k")                               # back to 3
    page.keyboard.press("u")                               # card 3 unsure
    assert focused.get_attribute("data-card") == "4"
    cards.nth(5).locator('button[data-decision="correct"]').click()
    cards.nth(6).locator("select").select_option("0")      # an sp1 card is sp0
    cards.nth(7).locator("select").select_option("1")      # its own species: correct
    cards.nth(8).locator('button[data-decision="wrong"]').click()
    cards.nth(9).locator('button[data-decision="unsure"]').click()
    page.keyboard.press("k")                               # back to card 9, and undo it
    page.keyboard.press("x")
    decided = {0: ("correct", "sp0"), 1: ("wrong", ""), 2: ("other", "sp2"), 3: ("unsure", ""),
               5: ("correct", "sp0"), 6: ("other", "sp0"), 7: ("correct", "sp1"), 8: ("wrong", "")}
    page.reload()
    page.wait_for_selector("body[data-ready]")
    shown = [cards.nth(i).get_attribute("data-decision") for i in range(12)]
    assert shown == [decided[i][0] if i in decided else "" for i in range(12)]
    assert page.locator("#species option").all_inner_texts()[0] == "All species (8/12 decided)"
    with page.expect_download() as download:
        page.click("#export-csv")
    data = page_data(review)
    assert Path(download.value.path()).read_text(encoding="utf-8") == expected_csv(data, decided)
    exported = tmp_path / "decisions.csv"
    shutil.copy(download.value.path(), exported)
    with page.expect_download() as download:
        page.click("#export-raven")
    events = read_raven(Path(download.value.path()).read_text(encoding="utf-8"), download.value.suggested_filename)
    names = dict(CLASSES)
    # read back as annotations, the export is what was decided: the confirmed or corrected species, noise for a
    # wrong detection, nothing for the unsure one
    reviewed = {i: names[label] if label else "noise" for i, (decision, label) in decided.items() if decision != "unsure"}
    want = sorted((data["recordings"][c["recording"]][1], c["start"], c["end"], reviewed[i])
                  for i, c in enumerate(data["cards"]) if i in reviewed)
    assert sorted((e.file, e.start_s, e.end_s, e.label) for e in events) == want
    assert {(e.low_hz, e.high_hz) for e in events} == {(500.0, 6000.0)}
    page.context.close()
    head_from_decisions(exported, data, decided, trained_run, tmp_path)


def head_from_decisions(exported: Path, data: dict, decided: dict, trained_run, tmp_path: Path) -> None:
    """The browser's decisions file, as annotations of the recordings it names, trains a head whose
    classes are the decided species plus noise (the wrong ones); the unsure one is counted."""
    from soundception.featurize.annotations import NOISE_LABEL
    from soundception.featurize.pipeline import featurize_store
    from soundception.shared.reader import FeatureStore
    from soundception.train.head import HeadOptions, fit_head
    from soundception.train.trained import load_trained_model

    audio = Path(data["recordings"][0][1]).parent
    summary = featurize_store(audio, str(tmp_path / "decided.zarr"), config=trained_run.config, labels="none",
                              annotations=exported)
    assert any("1 unsure decision(s) ignored" in note for note in summary.notes)
    expected = sorted({label or NOISE_LABEL for decision, label in decided.values() if decision != "unsure"})
    assert expected == ["noise", "sp0", "sp1", "sp2"]
    assert FeatureStore(str(tmp_path / "decided.zarr")).classes == expected
    head = fit_head(trained_run.checkpoint, str(tmp_path / "decided.zarr"), tmp_path / "head",
                    options=HeadOptions(validation_fraction=0.0), progress=False)
    assert load_trained_model(head["checkpoint"]).classes == expected


def test_j_at_the_end_of_a_page_opens_the_next_and_the_species_filter_narrows_the_cards(browser, tmp_path):
    predictions = make_predictions(tmp_path, top_k=3)  # sp2 detected everywhere: 60 detections, 3 species
    review = Path(build_review(predictions, options=ReviewOptions(top=20, per_bin=0))["out"])
    page = open_page(browser, review)
    assert page.locator(".card").count() == 50
    page.locator(".card").nth(49).locator('button[data-decision="unsure"]').click()  # decides, then moves on
    assert page.locator(".card").count() == 10 and page.locator(".card.focused").get_attribute("data-card") == "50"
    page.select_option("#species", "2")
    assert page.locator(".card").count() == 20
    assert set(page.locator(".card .species").all_inner_texts()) == {"Gamma, comma bird"}
    page.context.close()


def test_a_real_predict_run_reviews_with_the_checkpoints_classes(trained_run, tmp_path):
    """predict --segments on a store (the demo's path), then review: classes.csv names the checkpoint's classes."""
    from soundception.train.predict import PredictOptions, predict_store
    from soundception.train.trained import load_trained_model

    from soundception.shared.reader import FeatureStore

    out = tmp_path / "predictions"
    predict_store(trained_run.checkpoint, trained_run.store, out, PredictOptions(segment_seconds=2.0, device="cpu"),
                  file_ids=list(FeatureStore(trained_run.store).ids[:4]), progress=False)
    trained = load_trained_model(trained_run.checkpoint)
    summary = build_review(out, options=ReviewOptions(top=1, per_bin=1, bins=2))
    data = page_data(Path(summary["out"]))
    assert data["classes"] == [[i, n] for i, n in zip(trained.classes, trained.class_names)]
    assert summary["failed"] == 0 and all(card["media"] for card in data["cards"])
    with open(out / "predictions.csv", newline="") as handle:  # every card is a row of predict's own table
        rows = {(r["file"], float(r["start_s"]), float(r["end_s"]), r["class_id"], float(r["score"]))
                for r in csv.DictReader(handle)}
    for card in data["cards"]:
        file = data["recordings"][card["recording"]][0]
        assert (file, card["start"], card["end"], data["classes"][card["class"]][0], card["score"]) in rows
