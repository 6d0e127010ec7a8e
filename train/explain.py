"""What the model looked at in one window of a recording (paper 3.2, figures 4 and 5).

One PNG, three panels sharing the time axis (seconds from the start of the file's image):

1. the RGB image (R, G, B = the 128-, 512- and 2,048-point FFT log-spectrograms), frequency in Hz,
   with the temporal attention drawn as white marks in a dark band along its top edge (figure 4);
2. the temporal attention itself, the auxiliary branch's sigmoid per stride-16 step, as a curve;
3. the time-frequency attention, the main branch's softmax over stride-32 positions, as a grey map
   on the image's extent, white = most attention (figure 5).

The title names the file, the window and the top species with their probabilities (softmax of the
main logits for this window alone). Where the image repeats a short recording (self-concatenation
up to ``min_duration``), dashed lines mark each repeat; columns past the image's end (a window
wider than the image, zero-padded as evaluation does) are hatched.

:func:`attend` (model on a uint8 window) and :func:`draw` (arrays to PNG) are pure and tested on
their own; :func:`explain_file` reads the checkpoint and the store and joins them.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundception.shared import schema
from soundception.shared.reader import FeatureStore
from soundception.train.config import UserError, crop_width_px
from soundception.train.inference import file_windows, forward_windows
from soundception.train.runtime import resolve_device
from soundception.train.trained import TrainedModel, load_trained_model

MARK_BAND = 0.08  # height of the temporal-attention band on the image, as a fraction of the image
DPI = 120
REPEAT_COLOR, PADDING_COLOR = "#ff9f1c", "#888888"


@dataclass(frozen=True)
class Attention:
    """The model's view of one window.

    Attributes:
        probabilities: ``(K,)`` softmax of the main logits, class order of the checkpoint.
        temporal: ``(T16,)`` auxiliary-branch attention per time step, in [0, 1] (sigmoid); a 2-D
            auxiliary map (another attention type) is averaged over frequency.
        time_frequency: ``(F32, T32)`` main-branch attention, summing to 1 (softmax); row 0 is the
            highest frequency like the image; a 1-D main map becomes one row.
    """

    probabilities: np.ndarray
    temporal: np.ndarray
    time_frequency: np.ndarray


@dataclass(frozen=True)
class Drawing:
    """What :func:`draw` wrote: the title text, where the recording repeats (s) and each panel's box
    ``(left, top, right, bottom)``
    in PNG pixels (keys ``image``, ``temporal``, ``time_frequency``)."""

    title: str
    repeats_s: list[float]
    panels: dict[str, tuple[int, int, int, int]]


def attend(trained: TrainedModel, window: np.ndarray) -> Attention:
    """Class probabilities and both attention maps of the model for one uint8 window ``(C, H, W)``.

    The same forward pass as evaluation and prediction (:func:`train.inference.forward_windows`).
    """
    if window.ndim != 3 or window.dtype != np.uint8:
        raise ValueError(f"expected one uint8 window (channel, freq, time), got {window.dtype} {window.shape}")
    probabilities, temporal, time_frequency, _ = forward_windows(trained.model, torch.from_numpy(window[None]),
                                                              trained.device)
    temporal, time_frequency = temporal[0].astype(np.float64), time_frequency[0].astype(np.float64)
    if temporal.ndim == 2:
        temporal = temporal.mean(axis=0)
    if time_frequency.ndim == 1:
        time_frequency = time_frequency[None, :]
    return Attention(probabilities[0].astype(np.float64), temporal, time_frequency)


def repeat_times(start_s: float, end_s: float, *, duration: float | None, image_seconds: float | None,
                 pixel_seconds: float) -> list[float]:
    """Times (s, image time) inside ``(start_s, end_s)`` where a self-concatenated recording starts again.

    Multiples of ``duration`` short of the image's end by more than one pixel (``pixel_seconds``),
    so an image one rounding pixel longer than its recording shows no repeat.
    """
    if not duration or not duration > 0 or image_seconds is None:
        return []
    last = min(end_s, image_seconds - pixel_seconds)
    return [k * duration for k in range(max(1, math.ceil(start_s / duration)), int(last / duration) + 1)
            if start_s < k * duration < last]


def _add_time_marks(axes: Any, repeats: list[float], end_s: float, image_seconds: float | None) -> None:
    """Dashed lines where a self-concatenated recording repeats; hatching past the image's end."""
    for axis in axes:
        for seconds in repeats:
            axis.axvline(seconds, color=REPEAT_COLOR, linestyle="--", linewidth=1.5)
        if image_seconds is not None and image_seconds < end_s:
            axis.axvspan(image_seconds, end_s, facecolor="none", edgecolor=PADDING_COLOR, hatch="//", linewidth=0)


def draw(image: np.ndarray, attention: Attention, out: str | Path, *, pixels_per_second: float,
         max_frequency: float, class_names: list[str], start_s: float = 0.0, file_id: str = "",
         label: str | None = None, top_k: int = 3, duration: float | None = None,
         image_seconds: float | None = None, channel_names: tuple[str, ...] = ("FFT 128", "FFT 512", "FFT 2048"),
         ) -> Drawing:
    """Write the figure for one window to ``out`` (PNG).

    Args:
        image: uint8 ``(C, H, W)`` window; 3 channels are shown as R, G, B, otherwise channel 0 in grey.
            Row 0 is ``max_frequency`` (Hz, Nyquist), the last row 0 Hz.
        attention: the model's view of this window (:func:`attend`).
        pixels_per_second: image columns per second; ``start_s`` is the window's first column, s.
        class_names: names in the order of ``attention.probabilities``; ``label`` the true species.
        duration: the original recording's length, s; with ``image_seconds`` (the image's valid
            width, s) it marks repeats of a self-concatenated recording and the zero padding.

    Returns:
        The title and where each panel lies in the PNG (:class:`Drawing`).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (channel, freq, time), got {image.dtype} {image.shape}")
    if attention.temporal.ndim != 1 or attention.time_frequency.ndim != 2:
        raise ValueError(f"expected temporal (T,) and time-frequency (F, T) attention, got "
                         f"{attention.temporal.shape} and {attention.time_frequency.shape}")
    if len(class_names) != len(attention.probabilities):
        raise ValueError(f"{len(class_names)} class names for {len(attention.probabilities)} probabilities")
    _, height, width = image.shape
    end_s = start_s + width / pixels_per_second
    half_row = max_frequency / max(height - 1, 1) / 2
    extent = (start_s, end_s, -half_row, max_frequency + half_row)
    title = _title(attention.probabilities, class_names, top_k, file_id, start_s, end_s, label)

    figure = Figure(figsize=(12, 8.4), dpi=DPI, layout="constrained")
    grid = figure.add_gridspec(3, 2, width_ratios=(60, 1), height_ratios=(3, 1.3, 3))
    picture_axis = figure.add_subplot(grid[0, 0])
    curve_axis = figure.add_subplot(grid[1, 0], sharex=picture_axis)
    map_axis = figure.add_subplot(grid[2, 0], sharex=picture_axis)
    figure.suptitle(title, fontsize=12)

    _draw_image(picture_axis, image, attention.temporal, extent, channel_names)
    _draw_curve(curve_axis, attention.temporal, start_s, end_s)
    shown = _draw_map(map_axis, attention.time_frequency, extent)
    figure.colorbar(shown, cax=figure.add_subplot(grid[2, 1]), label="share of attention")
    picture_axis.set_xlim(start_s, end_s)
    for axis in (picture_axis, curve_axis):
        axis.tick_params(labelbottom=False)

    repeats = repeat_times(start_s, end_s, duration=duration, image_seconds=image_seconds,
                           pixel_seconds=1 / pixels_per_second)
    _add_time_marks((picture_axis, curve_axis, map_axis), repeats, end_s, image_seconds)
    _legend(figure, repeats, image_seconds is not None and image_seconds < end_s, duration)
    figure.savefig(out, dpi=DPI, metadata={"Title": title})
    panels = {"image": picture_axis, "temporal": curve_axis, "time_frequency": map_axis}
    return Drawing(title=title, repeats_s=repeats, panels={name: _box(figure, axis) for name, axis in panels.items()})


def _draw_image(axis: Any, image: np.ndarray, temporal: np.ndarray, extent: tuple,
                channel_names: tuple[str, ...]) -> None:
    picture = image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    axis.imshow(picture, aspect="auto", extent=extent, cmap=None if image.shape[0] == 3 else "gray")
    _draw_marks(axis, temporal, extent)
    axis.set_ylabel("frequency (Hz)")
    axis.set_title(f"image (R, G, B = {', '.join(channel_names[:3])}); white marks on top: temporal attention",
                   fontsize=10, loc="left")


def _draw_marks(axis: Any, temporal: np.ndarray, extent: tuple) -> None:
    """A black band over the image's top edge (the highest rows) with one white mark per time step,
    its opacity the attention: white where the model attends, black where it does not."""
    start_s, end_s, low, high = extent
    band = (start_s, end_s, high - MARK_BAND * (high - low), high)
    axis.imshow(np.zeros((1, 1)), extent=band, cmap="gray", vmin=0, vmax=1, aspect="auto")
    white = np.ones((1, len(temporal), 4))
    white[..., 3] = np.clip(temporal, 0, 1)
    axis.imshow(white, extent=band, aspect="auto", interpolation="nearest")
    axis.set_ylim(low, high)


def _draw_curve(axis: Any, temporal: np.ndarray, start_s: float, end_s: float) -> None:
    """The temporal attention as steps, each over its share of the window (16 px for stride 16)."""
    steps = start_s + np.arange(len(temporal) + 1) * (end_s - start_s) / len(temporal)
    axis.stairs(temporal, steps, fill=True, color="#3a6ea5", alpha=0.35)
    axis.stairs(temporal, steps, color="#3a6ea5", linewidth=1.5)
    axis.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    axis.set_ylim(0, max(1.0, float(temporal.max())) * 1.02)
    axis.set_ylabel("attention")
    axis.set_title("temporal attention (auxiliary branch, sigmoid per time step)", fontsize=10, loc="left")


def _draw_map(axis: Any, time_frequency: np.ndarray, extent: tuple) -> Any:
    """The time-frequency attention, cells spread evenly over the image's extent, black 0 to white max."""
    shown = axis.imshow(time_frequency, aspect="auto", extent=extent, cmap="gray",
                        vmin=0, vmax=float(time_frequency.max()) or 1.0, interpolation="nearest")
    axis.set_ylabel("frequency (Hz)")
    axis.set_xlabel("time from the start of the recording's image (s)")
    axis.set_title("time-frequency attention (main branch, softmax over positions; white = most)",
                   fontsize=10, loc="left")
    return shown


def _title(probabilities: np.ndarray, class_names: list[str], top_k: int, file_id: str, start_s: float,
           end_s: float, label: str | None) -> str:
    order = np.argsort(-probabilities, kind="stable")[:max(1, top_k)]
    top = ", ".join(f"{class_names[i]} {_percent(probabilities[i])}" for i in order)
    truth = f" (label: {label})" if label else ""
    return f"{file_id}{truth}, {start_s:.2f}-{end_s:.2f} s\ntop species: {top}"


def _percent(probability: float) -> str:
    return f"{100 * probability:.1f} %" if probability >= 0.0005 else "<0.1 %"


def _legend(figure: Any, repeats: list[float], padded: bool, duration: float | None) -> None:
    """A legend under the panels for the marks that are not self-explanatory, when there are any."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    if repeats:
        handles.append(Line2D([], [], color=REPEAT_COLOR, linestyle="--",
                              label=f"the {duration:.2f} s recording starts again (self-concatenated image)"))
    if padded:
        handles.append(Patch(facecolor="none", edgecolor=PADDING_COLOR, hatch="//",
                             label="past the image's end: zero padding"))
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=9)


def _box(figure: Any, axis: Any) -> tuple[int, int, int, int]:
    """The axis' box in PNG pixels, ``(left, top, right, bottom)``; PNG rows count from the top."""
    box = axis.get_window_extent()
    height = figure.bbox.height
    return (int(math.ceil(box.x0)), int(math.ceil(height - box.y1)), int(box.x1), int(height - box.y0))


def _file_index(store: FeatureStore, file_id: str) -> int:
    ids = [str(i) for i in store.ids]
    if file_id not in ids:
        close = difflib.get_close_matches(file_id, ids, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(ids)} files)"
        raise UserError(f"no file {file_id!r} in {store.url}{hint}")
    index = ids.index(file_id)
    status = str(store.table["status"][index])
    if status != schema.DONE:
        reason = str(store.table["error"][index]) if "error" in store.table else ""
        raise UserError(f"{file_id} is {status} in {store.url}, it has no image" + (f": {reason}" if reason else ""))
    return index


def _choose_start(trained: TrainedModel, store: FeatureStore, index: int, width: int) -> int:
    """First column of the window (half a window apart, as prediction) where the file's top species
    (mean softmax over those windows) is likeliest."""
    (windows,) = file_windows(trained.model, store, [index], width=width, hop=max(1, width // 2),
                              device=trained.device, attention=False)
    top_class = int(np.argmax(windows.recording_scores()))
    return int(windows.starts[int(np.argmax(windows.probabilities[:, top_class]))])


def explain_file(checkpoint: str | Path, store_url: str, file_id: str, out: str | Path, *,
                 start: float | None = None, seconds: float | None = None, device: str = "cpu",
                 storage_options: dict | None = None, top_k: int = 3,
                 trained: TrainedModel | None = None) -> dict[str, Any]:
    """Draw the attention of ``checkpoint``'s model on one window of ``file_id`` (see module doc).

    Args:
        start: window start, s from the start of the file's image; ``None`` picks the evaluation
            window where the file's top species is likeliest. A window hanging over the image's end
            is moved back inside it; an image narrower than the window is zero-padded.
        seconds: window length, s (``None``: the training crop).
        trained: ``checkpoint`` already loaded (:func:`train.trained.load_trained_model`), to load it once.

    Returns:
        ``file``, ``start_s`` and ``seconds`` (the window drawn), ``top`` (``(class_id, class_name,
        probability)`` best first), ``temporal_attention`` (per stride-16 step), ``repeats_s``
        (where the recording starts again inside the window), ``title``, ``panels`` and ``out``.

    Raises:
        UserError: unknown file, file not featurized, start past the image, store of another config.
    """
    trained = trained or load_trained_model(checkpoint, resolve_device(device))
    store = FeatureStore(store_url, storage_options)
    trained.check_store(store)
    index = _file_index(store, file_id)
    config = store.config
    pixels_per_second = config.pixels_per_second
    n_frames = int(store.table["n_frames"][index])
    if seconds is not None and not seconds > 0:
        raise UserError(f"window length must be positive, got {seconds} s")
    width = trained.crop_width if seconds is None else crop_width_px(seconds, config)
    if start is None:
        start_px = _choose_start(trained, store, index, width)
    else:
        start_px = int(round(start * pixels_per_second))
        if start < 0 or start_px >= n_frames:
            raise UserError(f"start {start} s is outside {file_id}'s image (0 to {n_frames / pixels_per_second:.2f} s)")
        start_px = max(0, min(start_px, n_frames - width))
    window = store.window(index, start_px, width)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    attention = attend(trained, window)
    label = int(store.table["label"][index]) if "label" in store.table else -1
    duration = float(store.table["duration"][index])
    drawing = draw(window, attention, out, pixels_per_second=pixels_per_second,
                   max_frequency=float(schema.freq_coordinate(config)[0]), class_names=trained.class_names,
                   start_s=start_px / pixels_per_second, file_id=file_id, top_k=top_k,
                   label=trained.class_names[label] if 0 <= label < len(trained.class_names) else None,
                   duration=duration if np.isfinite(duration) else None, image_seconds=n_frames / pixels_per_second,
                   channel_names=tuple(f"FFT {n}" for n in config.fft_windows))
    start_s = start_px / pixels_per_second
    order = np.argsort(-attention.probabilities, kind="stable")[:max(1, top_k)]
    return {"file": file_id, "start_s": start_s, "seconds": width / pixels_per_second,
            "top": [(trained.classes[i], trained.class_names[i], float(attention.probabilities[i])) for i in order],
            "temporal_attention": attention.temporal.tolist(), "repeats_s": drawing.repeats_s,
            "title": drawing.title, "panels": drawing.panels, "out": str(out)}
