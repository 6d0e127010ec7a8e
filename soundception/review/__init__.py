"""``soundception review``: a page to judge a run's detections (:mod:`.build`), with each card's media (:mod:`.media`)."""

from soundception.review.build import DECISION_COLUMNS, ReviewOptions, build_review, stratified_sample

__all__ = ["DECISION_COLUMNS", "ReviewOptions", "build_review", "stratified_sample"]
