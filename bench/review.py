"""Benchmark: the review page at 10,000 cards: how long it takes to build, how big the folder is, and
how long the page takes to respond in headless Chromium.

A predictions folder is made as ``predict --segments 5 --top-k 5`` lays it out, without a model:
synthetic recordings (:func:`featurize.synthetic.make_dataset`, 60 s each) and a journal whose
scores are random, with the species calling in a segment scored higher (from the generator's
call times), so the page looks like a review. ``soundception review`` then builds the page for
real (images and clips from the audio). Reported:

* build seconds, cards, distinct clips (cards of one segment share its clip), folder size, per
  1,000 cards and per clip;
* time to interactive: from navigation start (``performance.now()``) until a click on the first
  card's Correct button has marked it (the page loaded, data.js parsed, the first page drawn and
  its handlers bound), the median of 5 fresh browser contexts; also the first page alone.

With ``--screenshots DIR`` it also writes ``review-phone.png`` (390 px) and ``review-desktop.png``
(1280 px) there.

    .venv/bin/python bench/review.py                       # 10,000 cards (about 10 minutes on 2 cores)
    .venv/bin/python bench/review.py --recordings 30 --top 60 --per-bin 10   # a quick look
    .venv/bin/python bench/review.py --reuse --top 500   # the same recordings, another sample (clips reused)
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundception.featurize.synthetic import make_dataset  # noqa: E402
from soundception.review import ReviewOptions, build_review  # noqa: E402
from soundception.shared.config import FeaturizerConfig  # noqa: E402
from soundception.train.journal import Prediction, write_journal  # noqa: E402

SEGMENT, SECONDS, SPECIES = 5.0, 60.0, 10


def make_predictions(root: Path, recordings: int, seed: int) -> Path:
    """A predict --segments 5 --top-k 5 folder over ``recordings`` synthetic 60 s recordings."""
    corpus = make_dataset(root / "data", n_species=SPECIES, files_per_species=-(-recordings // SPECIES),
                          min_seconds=SECONDS, max_seconds=SECONDS, seed=seed, formats=("flac",))
    calls: dict[str, list[tuple[float, float, str]]] = {}
    with open(corpus["paths"]["calls"], newline="") as handle:
        for row in csv.DictReader(handle):
            calls.setdefault(row["file"], []).append((float(row["start"]), float(row["end"]), row["species"]))
    ids = [s["id"] for s in corpus["species"]]
    out, rng = root / "predictions", np.random.default_rng(seed)
    bounds = np.array([[s, s + SEGMENT] for s in np.arange(0, SECONDS, SEGMENT)])
    for file_id in corpus["files"]:
        scores = rng.dirichlet(np.ones(SPECIES), size=len(bounds)) * 0.4
        for start, end, species in calls.get(file_id, []):
            inside = (bounds[:, 0] < end) & (bounds[:, 1] > start)
            scores[inside, ids.index(species)] += rng.uniform(0.3, 0.6)
        scores = np.clip(scores, 0, 1).astype(np.float32)
        key = json.dumps({"checkpoint": "bench", "segment_seconds": SEGMENT})
        write_journal(out, key, Prediction(file=file_id, duration=SECONDS, path=str(Path(corpus["paths"]["audio"]) / file_id),
                                           scores=scores.mean(axis=0), segments=bounds, segment_scores=scores,
                                           bands=np.tile([1000.0, 8000.0], (len(bounds), 1))))
    settings = {"checkpoint_sha256": "bench", "store": "bench",
                "options": {"segment_seconds": SEGMENT, "top_k": 5, "min_score": 0.0}}
    (out / "settings.json").write_text(json.dumps(settings))
    (out / "featurizer_config.json").write_text(json.dumps(FeaturizerConfig().to_dict()))
    (out / "classes.csv").write_text("class_id,class_name\n" + "".join(
        f"{s['id']},{s['name']}\n" for s in corpus["species"]))
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def time_to_interactive(browser, index: Path, repeats: int) -> tuple[float, float]:
    """Median ms from navigation start to (first page drawn, first card's click handled)."""
    drawn, answered = [], []
    for _ in range(repeats):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(index.as_uri(), wait_until="commit")
        page.wait_for_selector('.card button[data-decision="correct"]')
        drawn.append(page.evaluate("performance.now()"))
        page.locator('.card button[data-decision="correct"]').first.click()
        page.wait_for_selector('.card[data-decision="correct"]')
        answered.append(page.evaluate("performance.now()"))
        context.close()
    return statistics.median(drawn), statistics.median(answered)


def screenshots(browser, index: Path, folder: Path) -> None:
    from PIL import Image

    for width, height, name in ((390, 844, "phone"), (1280, 800, "desktop")):
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.goto(index.as_uri())
        page.wait_for_selector("body[data-ready]")
        page.wait_for_function("[...document.querySelectorAll('.card img')].slice(0, 4).every((i) => i.complete)")
        page.keyboard.press("c")
        page.keyboard.press("w")
        page.evaluate("window.scrollTo(0, 0)")
        path = folder / f"review-{name}.png"
        page.screenshot(path=str(path))
        context.close()
        Image.open(path).convert("RGB").quantize(colors=96).save(path, optimize=True)  # small enough for the docs


@click.command()
@click.option("--recordings", default=300, show_default=True, help="Synthetic 60 s recordings (12 segments each).")
@click.option("--top", default=900, show_default=True)
@click.option("--per-bin", default=100, show_default=True)
@click.option("--bins", default=5, show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--work", type=click.Path(file_okay=False), default="bench/results/review", show_default=True)
@click.option("--screenshots", "shots", type=click.Path(file_okay=False), default=None)
@click.option("--seed", default=0, show_default=True)
@click.option("--reuse", is_flag=True, help="Keep the predictions folder and its review media from an earlier run "
                                             "(the build then times a rerun, which reuses every clip already made).")
def main(recordings: int, top: int, per_bin: int, bins: int, repeats: int, work: str, shots: str | None,
         seed: int, reuse: bool) -> None:
    from playwright.sync_api import sync_playwright

    root = Path(work).resolve()
    started = time.perf_counter()
    if reuse and (root / "predictions" / "settings.json").is_file():
        predictions = root / "predictions"
    else:
        shutil.rmtree(root, ignore_errors=True)
        predictions = make_predictions(root, recordings, seed)
    made = time.perf_counter() - started
    started = time.perf_counter()
    summary = build_review(predictions, options=ReviewOptions(top=top, per_bin=per_bin, bins=bins))
    built = time.perf_counter() - started
    review = Path(summary["out"])
    clips = len(list((review / "media").glob("*.ogg")))
    total, data = folder_bytes(review), (review / "data.js").stat().st_size
    media = folder_bytes(review / "media")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        drawn, answered = time_to_interactive(browser, review / "index.html", repeats)
        if shots:
            screenshots(browser, review / "index.html", Path(shots))
        browser.close()
    cards = summary["cards"]
    print(f"| recordings | cards | clips | build s | folder MB | data.js MB | per 1,000 cards MB | per clip KB "
          f"| first page drawn ms | first click answered ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
          f"| {recordings} | {cards:,} | {clips:,} | {built:.0f} | {total / 1e6:.1f} | {data / 1e6:.2f} | "
          f"{total / cards * 1000 / 1e6:.2f} | {media / max(clips, 1) / 1e3:.1f} | {drawn:.0f} | {answered:.0f} |")
    print(f"(making the synthetic predictions folder took {made:.0f} s, not counted)")


if __name__ == "__main__":
    main()
