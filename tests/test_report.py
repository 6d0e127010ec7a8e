"""``inspect --png`` draws the stored image: the PNG is decoded and its pixels compared with the store's."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
from click.testing import CliRunner
from matplotlib import colormaps

from soundception.featurize import store as store_io
from soundception.cli import main
from soundception.shared.config import FeaturizerConfig

CONFIG = FeaturizerConfig(min_duration=1.0)
WIDTH = 600  # columns, 3 s
DIM, BRIGHT = 40, 250


def known_image() -> np.ndarray:
    """uint8 ``(3, 299, WIDTH)``: each channel one bright band, at its own height and time span.

    R (fft128): rows 20-49 (near Nyquist) all along; G (fft512): rows 130-169 in the first half;
    B (fft2048): rows 240-279 (low frequencies) in the last third. Nothing is symmetric, so a flip
    of either axis or a swap of channels moves a band.
    """
    image = np.full((3, CONFIG.image_height, WIDTH), DIM, dtype=np.uint8)
    image[0, 20:50, :] = BRIGHT
    image[1, 130:170, : WIDTH // 2] = BRIGHT
    image[2, 240:280, 2 * WIDTH // 3 :] = BRIGHT
    return image


def write_store(url: str, image: np.ndarray) -> None:
    """A store holding one done file, ``known.wav``, whose image is ``image``."""
    group = store_io.open_for_writing(url, CONFIG, time_chunk=256)
    store_io.register_files(group, [{"id": "known.wav", "path": "known.wav", "label": -1, "background": ""}])
    store_io.ensure_width(group, image.shape[2], CONFIG)

    def blocks(chunk: int):
        return ((start, image[:, :, start : start + chunk]) for start in range(0, image.shape[2], chunk))

    store_io.write_image(url, 0, image.shape[2], blocks)
    store_io.write_fields(group, {0: {"status": "done", "n_frames": image.shape[2], "duration": 3.0}})


def panels(png: np.ndarray, colours: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes ``(top, bottom, left, right)`` (end exclusive), top to bottom, of the regions drawn in ``colours``."""
    mask = (np.abs(png[:, :, None, :] - colours[None, None]) <= 6).all(axis=-1).any(axis=-1)
    if not mask.any():
        return []
    rows = mask.sum(axis=1) >= 0.5 * mask.sum(axis=1).max()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], rows.astype(int), [0]])))
    runs: list[list[int]] = []
    for top, bottom in zip(edges[::2], edges[1::2]):
        if runs and top - runs[-1][1] <= 4:  # a band's blurred edge, not the gap between two panels
            runs[-1][1] = bottom
        else:
            runs.append([top, bottom])
    boxes = []
    for top, bottom in runs:
        columns = np.flatnonzero(mask[top:bottom].sum(axis=0) >= 0.5 * (bottom - top))
        if bottom - top >= 20 and columns.size >= 20:  # smaller: a few text pixels of that colour
            boxes.append((top, bottom, columns[0], columns[-1] + 1))
    return boxes


def compare(png: np.ndarray, box: tuple[int, int, int, int], expected: np.ndarray) -> float:
    """Largest colour difference between the PNG inside ``box`` and ``expected`` ``(rows, columns, 3)``
    resampled onto it, over pixels at least 3 px from any edge of a band (where drawing blurs)."""
    top, bottom, left, right = box
    rows = ((np.arange(bottom - top) + 0.5) / (bottom - top) * expected.shape[0]).astype(int)
    columns = ((np.arange(right - left) + 0.5) / (right - left) * expected.shape[1]).astype(int)
    wanted = expected[rows][:, columns]
    margin = 3
    padded = np.pad(wanted, ((margin, margin), (margin, margin), (0, 0)), mode="edge")
    interior = np.ones(wanted.shape[:2], dtype=bool)
    for dy in (0, margin, 2 * margin):
        for dx in (0, margin, 2 * margin):
            interior &= (padded[dy : dy + wanted.shape[0], dx : dx + wanted.shape[1]] == wanted).all(axis=-1)
    interior[:margin], interior[-margin:], interior[:, :margin], interior[:, -margin:] = False, False, False, False
    assert interior.mean() > 0.5
    return float(np.abs(png[top:bottom, left:right][interior] - wanted[interior]).max())


def test_inspect_png_shows_the_stored_image_and_each_channel(tmp_path: Path):
    image = known_image()
    url, out = str(tmp_path / "known.zarr"), tmp_path / "known.png"
    write_store(url, image)
    result = CliRunner().invoke(main, ["inspect", url, "--png", "known.wav", str(out)])
    assert result.exit_code == 0, result.output
    png = np.round(matplotlib.image.imread(out)[:, :, :3] * 255)

    # the RGB panel: R, G, B are the three channels in order, row 0 at the top, time left to right
    composite = np.moveaxis(image, 0, -1).astype(float)
    colours = np.array([[DIM, DIM, DIM], [BRIGHT, DIM, DIM], [DIM, BRIGHT, DIM], [DIM, DIM, BRIGHT]], float)
    found = panels(png, colours)
    assert len(found) == 1, found
    assert compare(png, found[0], composite) <= 8

    # one panel per channel below it, in channel order, drawn with magma over the full 0..255 range
    magma = np.round(colormaps["magma"](np.arange(256))[:, :3] * 255)
    found_channels = panels(png, magma[[DIM, BRIGHT]])
    assert len(found_channels) == 3 and found_channels[0][0] > found[0][1], found_channels
    for box, channel in zip(found_channels, image):
        assert compare(png, box, magma[channel]) <= 8
