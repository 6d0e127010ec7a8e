"""Inspecting a store: a text summary, the list of failures, and a PNG of one file's image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from soundception.shared import schema
from soundception.shared.reader import FeatureStore, StoreError


def _store_bytes(url: str) -> int | None:
    path = Path(url)
    if not path.is_dir():
        return None  # remote stores: size is not cheap to compute
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def summary_lines(store: FeatureStore) -> list[str]:
    """Human-readable summary: counts by status, hours of audio, classes, size, config."""
    table = store.table
    status = table["status"]
    counts = {name: int(np.sum(status == name)) for name in schema.STATUSES}
    done = status == schema.DONE
    hours = float(np.nansum(table["duration"][done])) / 3600
    labelled = int(np.sum(table["label"][done] >= 0))
    warned = int(np.sum((table["warning"] != "") & done))
    size = _store_bytes(store.url)
    config = store.config
    lines = [
        f"store       {store.url}",
        f"files       {store.n_files}: {counts['done']} done, {counts['failed']} failed, {counts['pending']} pending"
        + (f" ({warned} done with a warning)" if warned else ""),
        f"audio       {hours:.2f} h in done files ({labelled} labelled)",
        f"classes     {len(store.classes)}" + (f": {', '.join(store.classes[:8])}" + (" ..." if len(store.classes) > 8 else "")
                                                if store.classes else ""),
        f"image       {store.image_shape} uint8 (file, channel, freq, time), time chunk {store.time_chunk} px",
    ]
    try:
        events = store.events["event_file"]
        if len(events):
            lines.append(f"events      {len(events)} annotated calls in {len(set(events.tolist()))} files")
    except StoreError as error:  # an interrupted featurize --annotations: say so, the rest still reads
        lines.append(f"events      {error}")
    if size is not None:
        lines.append(f"size        {size / 1e6:.1f} MB on disk")
    lines += [
        f"config      hash {store.config_hash}: {config.sample_rate} Hz, windows {list(config.fft_windows)}, "
        f"hops {'/'.join(map(str, config.hop_lengths))}, resize time {config.time_resize} / frequency {config.frequency_resize}, "
        f"min_duration {config.min_duration:g} s, grey 0 at {config.floor_db:g} dB over the background, "
        f"255 at the {config.ceiling_percentile:g}th percentile, {config.dynamic_range_db[0]:g}-"
        f"{config.dynamic_range_db[1]:g} dB apart, {config.image_height} px per {config.image_seconds:g} s",
    ]
    if counts["failed"]:
        lines.append(f"failed      list them with: soundception inspect {store.url} --failed")
    if counts["pending"]:
        lines.append("pending     rerun soundception featurize with the same --store to finish them")
    return lines


def failure_lines(store: FeatureStore) -> list[str]:
    """One ``id<TAB>reason`` line per failed file."""
    table = store.table
    failed = np.flatnonzero(table["status"] == schema.FAILED)
    return [f"{store.ids[i]}\t{table['error'][i]}" for i in failed]


def find_file(store: FeatureStore, file_id: str) -> int:
    """Index of ``file_id`` (an id, or a unique suffix of one, or a row number)."""
    ids = list(store.ids)
    if file_id in ids:
        return ids.index(file_id)
    matches = [i for i, name in enumerate(ids) if name.endswith(file_id)]
    if len(matches) == 1:
        return matches[0]
    if file_id.isdigit() and int(file_id) < len(ids):
        return int(file_id)
    raise KeyError(f"no single file matches {file_id!r} ({len(matches)} matches)")


def render_png(store: FeatureStore, file_id: str, out: str | Path) -> Path:
    """Draw a file's RGB image and its three channels with axes in seconds and Hz."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = find_file(store, file_id)
    if store.table["status"][index] != schema.DONE:
        raise ValueError(f"{store.ids[index]} is {store.table['status'][index]}, it has no image")
    image = store.image(index)
    seconds = image.shape[2] / store.config.pixels_per_second
    nyquist = store.config.sample_rate / 2
    half_row = nyquist / (store.config.image_height - 1) / 2  # rows are centred on their frequency
    extent = (0.0, seconds, -half_row, nyquist + half_row)  # row 0 is the top (Nyquist)
    names = list(store.config.channel_names)
    figure, axes = plt.subplots(1 + len(names), 1, figsize=(min(24, 6 + seconds / 3), 3 * (1 + len(names))),
                                sharex=True, squeeze=False)
    axes = axes[:, 0]
    axes[0].imshow(np.moveaxis(image[:3], 0, -1), aspect="auto", extent=extent)
    label = int(store.table["label"][index])
    title = store.ids[index] + (f"  [{store.class_names[label]}]" if label >= 0 else "  [unlabelled]")
    figure.suptitle(title)
    axes[0].set_title(f"RGB = {', '.join(names[:3])}")
    for axis, channel, name in zip(axes[1:], image, names):
        axis.imshow(channel, aspect="auto", extent=extent, cmap="magma", vmin=0, vmax=255)
        axis.set_title(name)
    for axis in axes:
        axis.set_ylabel("frequency (Hz)")
    axes[-1].set_xlabel("time (s)")
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out
