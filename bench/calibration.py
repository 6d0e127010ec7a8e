"""Benchmark: how well calibrated are a checkpoint's scores, before and after ``soundception calibrate``?

Predicts the checkpoint's validation recordings once, as ``predict`` does (recording scores, and
segment scores against the store's annotated calls), then prints:

* per kind of score: the fitted map, the ECE (10 equal-width bins) of the raw scores, of the
  calibrated scores cross-fitted (2 folds over recordings: measured on recordings its map did not
  see) and in-sample;
* what ``predict``'s default ``--min-score 0.1`` keeps of its top-5 rows, and how many of the
  (item, species) pairs where the species is present it keeps;
* how many species reach a precision of 0.9 (``soundception thresholds`` on the validation split).

and draws the reliability figure (``--figure``). Build the model as docs/predict.md says
(the demo's training settings on a synthetic store featurized with its calls as annotations).

    .venv/bin/python bench/calibration.py --checkpoint run/checkpoints/last.pt --store store.zarr \\
        --figure docs/figures/reliability.png
"""

from __future__ import annotations

import argparse

import numpy as np

from soundception.train.calibrate import fitted, reliability_figure, validation_scores
from soundception.train.thresholds import pair_decisions, species_thresholds


def top_k_kept(scores: np.ndarray, truth: np.ndarray, *, k: int = 5, min_score: float = 0.1) -> tuple[float, float]:
    """``(fraction of top-k rows at or above min_score, fraction of present pairs among those kept rows)``."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    present = np.take_along_axis(truth, order, axis=1)
    kept = top >= min_score
    return float(kept.mean()), float((kept & present).sum() / max(truth.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--segments", type=float, default=5.0)
    parser.add_argument("--figure", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    scores = validation_scores(args.checkpoint, args.store, segment_seconds=args.segments, device=args.device)
    kinds = [("recording", scores.recording, scores.recording_truth, np.arange(len(scores.file_ids)))]
    if scores.segment.size:
        kinds.append((f"{args.segments:g} s segment", scores.segment, scores.segment_truth, scores.segment_recording))
    print(f"{len(scores.file_ids)} validation recordings, {len(scores.classes)} classes")
    print("| scores | pairs | present | slope | intercept | ECE raw | ECE calibrated (held out) | ECE calibrated "
          "(in-sample) | top-5 rows kept at 0.1 | present pairs kept | species reaching precision 0.9 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    panels = []
    for name, raw, truth, groups in kinds:
        _, summary, held = fitted(raw, truth, groups, folds=2, seed=0)
        panels.append((f"{name} scores", raw, held, truth))
        kept, recall = top_k_kept(raw, truth)
        rows = species_thresholds(pair_decisions(raw, truth, scores.classes), scores.classes, precision=0.9)
        reached = sum(r.threshold is not None for r in rows)
        print(f"| {name} | {summary['pairs']} | {summary['present']} | {summary['slope']:.3f} | "
              f"{summary['intercept']:.3f} | {summary['ece_before']:.3f} | {summary['ece_after']:.3f} | "
              f"{summary['ece_after_in_sample']:.3f} | {kept:.1%} | {recall:.1%} | {reached} of {len(rows)} |")
    if args.figure:
        reliability_figure(args.figure, panels)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
