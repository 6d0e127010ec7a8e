"""``soundception fit-head``: a few-shot classifier on a trained model's embeddings, in seconds on a CPU.

Perch's "agile modelling" and BirdNET-Analyzer's custom classifiers work this way: embed every
recording once with a model trained on many species, then fit a linear classifier for the lab's
own species on those embeddings. Here the embeddings are the base checkpoint's window features
(the main branch's attention-pooled features, :mod:`train.embeddings`), and the classifier is a
class-balanced multinomial logistic regression (scikit-learn) on standardised features:

    p(class | window) = softmax(W (x - mean) / scale + b)

Every window of a training recording is an example of the recording's label (at most
``windows_per_recording`` of them, drawn with the seed, so long recordings do not outweigh short
ones); in a recording with annotated calls (``featurize --annotations``, a review's decisions
included), the windows over its calls are examples of their calls' classes instead. The
regularisation C is chosen from a small grid by cross-validation over recordings
(folds never split a recording), scored by the recording MAP of the mean window probabilities,
which is how ``predict`` and ``evaluate`` score a recording.

The result is an ordinary checkpoint: the base's backbone and both attentions, and the main head's
linear layer replaced by the fitted classifier with the standardisation folded in (so the head's
probabilities equal the logistic regression's, to float precision). ``predict``, ``evaluate``,
``score`` and ``explain`` use it like any other. The auxiliary head, used only as a training
loss, is zeroed. The checkpoint holds the split (validation recordings held out per class), and
``head``: the base (path, sha256, step), C, the cross-validated MAP and the times.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from soundception.shared import schema
from soundception.train.checkpoint import save_checkpoint
from soundception.train.config import UserError
from soundception.train.dataset import Split, open_store, trainable_indices
from soundception.train.metrics import mean_average_precision

C_GRID = (0.01, 0.1, 1.0, 10.0)


@dataclass(frozen=True)
class HeadOptions:
    """How the head is fitted; see the module docstring.

    Attributes:
        validation_fraction: recordings held out per class (none of a class with fewer than 3).
        windows_per_recording: at most this many windows of a recording are training examples.
        seed: the split's and the window draw's seed.
        c_grid: inverse regularisation strengths tried; a single value skips cross-validation.
        max_folds: cross-validation folds (fewer where a class has fewer training recordings).
    """

    validation_fraction: float = 0.2
    windows_per_recording: int = 8
    seed: int = 0
    c_grid: tuple[float, ...] = C_GRID
    max_folds: int = 5


def stratified_split(store: Any, labels: np.ndarray, *, fraction: float, seed: int) -> Split:
    """Hold out ``round(fraction * n)`` recordings of each class with ``n >= 3`` (at least one; two stay to train)."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"validation_fraction must be in [0, 1), got {fraction}")
    indices = trainable_indices(store)
    indices = indices[labels[indices] >= 0]
    if indices.size == 0:
        raise UserError(f"{store.url} has no labelled file with status 'done' to fit a head on")
    rng = np.random.default_rng(seed)
    validation: list[int] = []
    for label in np.unique(labels[indices]):
        members = rng.permutation(indices[labels[indices] == label])
        if len(members) >= 3 and fraction > 0:
            validation += members[:min(len(members) - 2, max(1, round(fraction * len(members))))].tolist()
    held = np.sort(np.array(validation, dtype=np.int64))
    train = np.setdiff1d(indices, held)
    return Split(train=tuple(int(i) for i in train), validation=tuple(int(i) for i in held),
                 train_ids=tuple(str(store.ids[i]) for i in train), validation_ids=tuple(str(store.ids[i]) for i in held),
                 seed=seed, validation_fraction=fraction)


def event_windows(starts: np.ndarray, window_s: float, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which windows are examples of which annotated call's class.

    Args:
        starts: ``(W,)`` window starts, s; window_s: their length, s.
        events: ``(E, 3)`` rows ``(start_s, end_s, class index)``.

    Returns:
        ``(window positions, classes)``, one pair per window and call it overlaps by at least half
        the call or half the window, whichever is shorter (a short call inside a window, or a window
        inside a long call); windows overlapping no call give none.
    """
    if not len(events) or not len(starts):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    begin, end = events[:, 0][None, :], events[:, 1][None, :]
    overlap = np.minimum(starts[:, None] + window_s, end) - np.maximum(starts[:, None], begin)
    enough = overlap >= 0.5 * np.minimum(end - begin, window_s) - 1e-9
    windows, calls = np.nonzero(enough & (overlap > 0))
    return windows.astype(np.int64), events[calls, 2].astype(np.int64)


def window_examples(group: zarr.Group, file_ids: list[str], labels: np.ndarray, *, per_recording: int,
                    seed: int, events: dict[str, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X (n, features) float64, y (n,) class index, recording (n,) position in file_ids)``.

    A recording's windows that start within its duration (not in a short clip's repeat), at most
    ``per_recording`` of them, drawn with ``seed``, each an example of the recording's label. A
    recording with annotated calls (``events``: file id -> ``(E, 3)`` rows ``(start_s, end_s, class
    index)``) gives instead the windows over its calls, each an example of its call's class
    (:func:`event_windows`); windows over no call are left out, since a call not annotated may sound
    in them.
    """
    events = events or {}
    window_s = float(group.attrs.get("window_seconds", 0.0))
    ids = schema.as_strings(group["file"][...]).tolist()
    row = {file_id: k for k, file_id in enumerate(ids)}
    missing = [f for f in file_ids if f not in row]
    if missing:
        raise UserError(f"the embeddings hold no {missing[0]!r} ({len(missing)} file(s) of the store missing): "
                        "embed the whole store (leave out --embeddings to embed it here)")
    n_windows = group["n_windows"][...]
    durations = group["duration_s"][...] if "duration_s" in group else np.full(len(ids), np.inf)
    rng = np.random.default_rng(seed)
    xs, ys, recs = [], [], []
    for position, (file_id, label) in enumerate(zip(file_ids, labels)):
        k = row[file_id]
        count = int(n_windows[k])
        if count == 0:
            raise UserError(f"the embeddings of {file_id!r} are not written (predict failed or stopped on it)")
        starts = group["start_s"][k, :count]
        usable = np.flatnonzero(~(starts >= durations[k])) if np.isfinite(durations[k]) else np.arange(count)
        usable = usable if usable.size else np.arange(1)
        windows, classes = event_windows(starts[usable], window_s, events.get(file_id, np.zeros((0, 3))))
        if windows.size:  # examples from the annotated calls
            chosen = np.sort(rng.choice(windows.size, size=min(per_recording, windows.size), replace=False))
            rows, y = usable[windows[chosen]], classes[chosen]
        else:
            rows = np.sort(rng.choice(usable, size=min(per_recording, usable.size), replace=False))
            y = np.full(len(rows), label)
        xs.append(group["embedding"][k, :count][rows].astype(np.float64))
        ys.append(y)
        recs.append(np.full(len(rows), position))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(recs)


def calls_by_file(store: Any) -> dict[str, np.ndarray]:
    """The store's annotated calls, file id -> ``(E, 3)`` float rows ``(start_s, end_s, class index)``."""
    events = store.events
    found: dict[str, np.ndarray] = {}
    for index in np.unique(events["event_file"]):
        rows = events["event_file"] == index
        found[str(store.ids[index])] = np.stack([events["event_start_s"][rows], events["event_end_s"][rows],
                                                 events["event_class"][rows].astype(np.float64)], axis=1)
    return found


def one_blas_thread() -> Any:
    """A context in which numpy's BLAS runs one thread. The logistic regression's products are small
    (windows x features x classes); OpenBLAS's threads cost more than they give there: fitting on 315
    windows x 576 features took 2-6 s with 2 threads and 0.1-0.4 s with one (``bench/head.py``)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def classifier(c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000,
                                                              random_state=seed))


def recording_map(probabilities: np.ndarray, recordings: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """BirdCLEF MAP of each recording's mean window probabilities (rows of ``probabilities`` by recording)."""
    order = np.unique(recordings)
    means = np.stack([probabilities[recordings == r].mean(axis=0) for r in order])
    relevant = np.zeros((len(order), n_classes), dtype=bool)
    for row, r in enumerate(order):  # every class a recording's examples are of (several with calls annotated)
        relevant[row, np.unique(labels[recordings == r])] = True
    return mean_average_precision(means, relevant)


def choose_c(x: np.ndarray, y: np.ndarray, recordings: np.ndarray, n_classes: int,
             options: HeadOptions) -> tuple[float, dict[str, float]]:
    """The C of ``options.c_grid`` with the best cross-validated recording MAP; ``{C: MAP}`` for each."""
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = [len(np.unique(recordings[y == c])) for c in np.unique(y)]
    folds = min(options.max_folds, min(per_class))
    if len(options.c_grid) == 1 or folds < 2:
        return options.c_grid[len(options.c_grid) // 2 if len(options.c_grid) > 1 else 0], {}
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=options.seed)
    scores = {}
    for c in options.c_grid:
        probabilities = np.zeros((len(y), n_classes))
        for fit_rows, test_rows in splitter.split(x, y, recordings):
            model = classifier(c, options.seed).fit(x[fit_rows], y[fit_rows])
            probabilities[np.ix_(test_rows, model.classes_)] = model.predict_proba(x[test_rows])
        scores[c] = recording_map(probabilities, recordings, y, n_classes)
    best = max(options.c_grid, key=lambda c: (scores[c], -abs(np.log10(c))))  # ties: nearest to C = 1
    return best, scores


def linear_weights(pipeline: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted standardiser + logistic regression as one ``(n_classes, features)`` weight and bias whose
    softmax equals ``predict_proba`` (a binary model's one logit row becomes ``[0, w]``)."""
    scaler, regression = pipeline[0], pipeline[-1]
    coef = regression.coef_ / scaler.scale_
    intercept = regression.intercept_ - coef @ scaler.mean_
    if coef.shape[0] == 1:  # binary: p(second class) = sigmoid(w x + b) = softmax([0, w x + b])
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    weight = np.zeros((n_classes, coef.shape[1]))
    bias = np.full(n_classes, -1e4)  # a class the head never saw gets no probability
    weight[regression.classes_], bias[regression.classes_] = coef, intercept
    return weight, bias


def fit_head(checkpoint: str | Path, store_url: str, out: str | Path, *, embeddings: str | Path | None = None,
             options: HeadOptions = HeadOptions(), device: str = "cpu", batch_size: int = 8, workers: int = 0,
             progress: bool = True, trained: Any = None) -> dict[str, Any]:
    """Fit a head for ``store_url``'s classes on ``checkpoint``'s embeddings; write ``OUT/head.pt``.

    ``trained``: the checkpoint already loaded (:func:`train.trained.load_trained_model`), if it is.

    The store must be featurized with the checkpoint's config. Embeddings come from ``embeddings``
    (a Zarr that ``predict --embeddings`` wrote with this checkpoint) or are written to
    ``OUT/embeddings.zarr`` (resumable; reused by a rerun).

    Returns:
        ``checkpoint`` (the head's), ``c``, ``cv_map`` (``{C: MAP}``), ``validation`` (the held-out
        recordings' report, or ``{}``), ``embed_seconds``, ``fit_seconds``, ``windows``, ``recordings``.
    """
    from soundception.train.evaluate import evaluate
    from soundception.train.predict import PredictOptions, predict_store
    from soundception.train.trained import load_trained_model

    out = Path(out)
    trained = trained or load_trained_model(checkpoint, device)
    store = open_store(store_url)
    trained.check_store(store)
    if not store.classes:
        raise UserError(f"{store_url} has no classes: featurize it with labels")
    labels = np.asarray(store.table["label"])
    split = stratified_split(store, labels, fraction=options.validation_fraction, seed=options.seed)
    train_ids = list(split.train_ids)
    calls = calls_by_file(store)
    seen = set(labels[list(split.train)].tolist())
    seen |= {int(c) for f in train_ids for c in calls.get(f, np.zeros((0, 3)))[:, 2]}
    missing = sorted(set(range(len(store.classes))) - seen)
    if missing:
        raise UserError(f"class {store.classes[missing[0]]!r} has no recording to fit on ({len(missing)} such class(es))")
    started = time.perf_counter()
    if embeddings is None:
        embeddings = out / "embeddings.zarr"
        predict_store(checkpoint, store_url, out / "predict", PredictOptions(device=device, batch_size=batch_size,
                                                                             workers=workers), trained=trained,
                      progress=progress, embeddings=embeddings)
    group = zarr.open_group(str(embeddings), mode="r", use_consolidated=False)
    if group.attrs.get("checkpoint_sha256") != trained.digest:
        raise UserError(f"{embeddings} was not written with {checkpoint} (checkpoint_sha256 differs)")
    embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    x, y, recordings = window_examples(group, train_ids, labels[list(split.train)],
                                       per_recording=options.windows_per_recording, seed=options.seed,
                                       events=calls)
    unseen = sorted(set(range(len(store.classes))) - set(np.unique(y).tolist()))
    if unseen:  # e.g. a class whose only calls lie past their recording's end, over no window
        raise UserError(f"class {store.classes[unseen[0]]!r} has no window to fit on ({len(unseen)} such class(es)): "
                        "its calls overlap no window of a training recording (past the recording's end?)")
    with one_blas_thread():
        c, scores = choose_c(x, y, recordings, len(store.classes), options)
        pipeline = classifier(c, options.seed).fit(x, y)
    fit_seconds = time.perf_counter() - started
    weight, bias = linear_weights(pipeline, len(store.classes))
    path = write_head_checkpoint(trained, store, split, weight, bias, out / "head.pt", head={
        "base": {"path": str(checkpoint), "sha256": trained.digest, "step": trained.step}, "c": c,
        "cv_map": {str(k): v for k, v in scores.items()}, "windows": int(len(y)), "recordings": len(train_ids),
        "embed_seconds": round(embed_seconds, 3), "fit_seconds": round(fit_seconds, 3)})
    validation = evaluate(path, store_url, device=device, batch_size=batch_size) if split.validation else {}
    return {"checkpoint": str(path), "c": c, "cv_map": scores, "validation": validation, "windows": int(len(y)),
            "recordings": len(train_ids), "embed_seconds": embed_seconds, "fit_seconds": fit_seconds}


def write_head_checkpoint(trained: Any, store: Any, split: Split, weight: np.ndarray, bias: np.ndarray, path: Path,
                          *, head: dict[str, Any]) -> Path:
    """The base model (``trained``, :class:`train.trained.TrainedModel`) with heads for ``store``'s classes:
    the main head's linear layer ``weight`` ``(K, features)`` and ``bias`` ``(K,)``, the auxiliary head
    zeroed; ``split`` and ``head`` recorded."""
    model = trained.model
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    n = len(store.classes)
    state["main_head.1.weight"] = torch.from_numpy(weight).float()
    state["main_head.1.bias"] = torch.from_numpy(bias).float()
    state["aux_head.1.weight"] = torch.zeros(n, state["aux_head.1.weight"].shape[1])
    state["aux_head.1.bias"] = torch.zeros(n)
    kept = {"featurizer_config": json.dumps(trained.featurizer_config.to_dict()), "config_hash": trained.config_hash,
            "run_config": json.dumps(trained.run_config.to_dict()), "step": trained.step}  # the base's, as loaded
    return save_checkpoint(path, {**kept, "model": state, "split": json.dumps(split.to_dict()),
                                  "classes": json.dumps(store.classes), "class_names": json.dumps(store.class_names),
                                  "head": json.dumps(head)})
