"""The decisions CSV: what a review round exports, and what thresholds and annotations read back.

One row per reviewed detection, columns in this order::

    file,start,end,predicted,score,decision,label,weight,path

``file``: the recording's file id (as in ``predictions.csv``); ``start``, ``end``: seconds from the
recording's start; ``predicted``: the class id the model proposed, ``score`` its score; ``decision``:
one of :data:`DECISIONS`; ``label``: the class id a person says is there (the prediction for
``correct``, the chosen class for ``other``, empty for ``wrong`` and ``unsure``); ``weight``: how many
detections of its species' score stratum the card stands for (1 for the top-N census); ``path``: the
source audio. Written by ``soundception review``'s page, read by ``soundception thresholds`` and, as
call annotations, by ``featurize --annotations`` (a ``wrong`` detection becomes a call of
:data:`NOISE_LABEL`).
"""

from __future__ import annotations

DECISION_COLUMNS = ("file", "start", "end", "predicted", "score", "decision", "label", "weight", "path")
DECISIONS = ("correct", "wrong", "other", "unsure")
NOISE_LABEL = "noise"  # the class of reviewed detections marked wrong
