"""The training loss (paper 3.3): main-head loss plus a weighted auxiliary-head loss.

Single-label (default): cross-entropy against the main species. Multi-label: binary
cross-entropy against the main species and the background species (``target`` vectors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from soundception.train.model import SoundceptionOutput


def head_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, *, multilabel: bool) -> torch.Tensor:
    """Loss of one head: logits ``(B, K)``, labels ``(B,)`` int64, targets ``(B, K)`` in {0, 1}."""
    logits = logits.float()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    return F.cross_entropy(logits, labels)


def soundception_loss(output: SoundceptionOutput, labels: torch.Tensor, targets: torch.Tensor, *,
                      aux_weight: float = 0.4, multilabel: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """``main + aux_weight * aux``; also returns both parts as floats for logging."""
    main = head_loss(output.logits, labels, targets, multilabel=multilabel)
    aux = head_loss(output.aux_logits, labels, targets, multilabel=multilabel)
    total = main + aux_weight * aux
    return total, {"loss_main": float(main.detach()), "loss_aux": float(aux.detach())}
